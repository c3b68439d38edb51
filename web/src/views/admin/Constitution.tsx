// "Constitution": the tenant's governing document (ConstitutionService). Every token carries
// the hash of the document it was issued for, and admission refuses a token whose hash is
// not the current one, so saving a new document signs everyone out, this page's user too.
import { useState } from "react";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { useAuth, useClaims } from "../../lib/auth";
import { Time } from "./format";
import { useCall } from "./useCall";

const MAX_BYTES = 256 * 1024;
const encoder = new TextEncoder();

export function ConstitutionSection({ tenant }: { tenant: string }) {
  const claims = useClaims();
  const { signOut } = useAuth();
  const name = `${tenant}/constitution`;
  const got = useCall(() => api.constitution.getConstitution({ name }), [name]);
  // null: the textarea shows the stored document unchanged.
  const [draft, setDraft] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();
  const [savedSha, setSavedSha] = useState("");

  const current = got.data?.constitution;
  const text = draft ?? current?.content ?? "";
  const bytes = encoder.encode(text).length;
  const changed = draft !== null && draft !== (current?.content ?? "");
  const tokenCommand = [
    `skm token --tenant ${claims.tenant} --user ${claims.sub}`,
    ...claims.roles.map((role) => `--role ${role}`),
  ].join(" ");
  const tokenStale = Boolean(current && claims.constitutionSha256 && claims.constitutionSha256 !== current.sha256);

  const save = async () => {
    if (draft === null) return;
    setBusy(true);
    setError(undefined);
    try {
      // The etag of a never-stored constitution is empty, which is what the read gave.
      const reply = await api.constitution.updateConstitution({
        constitution: { name, content: draft, etag: current?.etag ?? "" },
      });
      setSavedSha(reply.constitution?.sha256 ?? "");
      setDraft(null);
      await got.reload();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const discard = () => {
    setDraft(null);
    setError(undefined);
    void got.reload();
  };

  return (
    <section className="card stack admin-section">
      <h2>Constitution</h2>
      <ErrorBanner error={got.error} />
      {current && (
        <dl className="kv small">
          <div>
            <dt>SHA-256</dt>
            <dd className="mono">{current.sha256}</dd>
          </div>
          <div>
            <dt>Last changed</dt>
            <dd>{current.updateTime ? <Time ts={current.updateTime} mode="absolute" /> : "never stored (empty)"}</dd>
          </div>
        </dl>
      )}
      {tokenStale && !savedSha && (
        <p className="small" role="status">
          Your token was issued for another version of this document: other calls are refused
          (CONSTITUTION_HASH_STALE) until you sign in again with a new token.
        </p>
      )}
      <label htmlFor="constitution-text">Constitution</label>
      <textarea
        id="constitution-text"
        rows={14}
        value={text}
        disabled={!current}
        onChange={(event) => setDraft(event.target.value)}
        aria-describedby="constitution-size"
        spellCheck
      />
      <span id="constitution-size" className={bytes > MAX_BYTES ? "small badge badge-deny" : "small muted"}>
        {bytes.toLocaleString()} of {MAX_BYTES.toLocaleString()} bytes (UTF-8)
      </span>
      <div className="row">
        <button
          type="button"
          className="btn btn-primary"
          disabled={!changed || busy || bytes > MAX_BYTES}
          onClick={() => void save()}
        >
          Save constitution
        </button>
        <button type="button" className="btn" disabled={busy} onClick={discard}>
          Discard changes and reload
        </button>
      </div>
      <p className="muted small">
        Saving makes every token issued for the current document stale at once, yours included.
      </p>
      <ErrorBanner error={error} />
      <div role="status">
        {savedSha && (
          <div className="admin-notice">
            <p>
              <strong>Constitution saved</strong> (SHA-256 <code>{savedSha}</code>). Tokens issued for the old
              document are now stale, yours included: sign in again with a new token (e.g.{" "}
              <code>{tokenCommand}</code>).
            </p>
            <button type="button" className="btn" onClick={signOut}>
              Sign out to sign in again
            </button>
          </div>
        )}
      </div>
    </section>
  );
}
