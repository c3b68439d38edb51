// "Personas": the tenant's personas (PersonaService). Installing a signed bundle file also
// upgrades a persona that an older bundle installed (the service compares the versions);
// an edit (UpdatePersona) and a roll back each make a new revision; uninstalling removes a
// bundle's persona and the permissions it wrote. Built-in personas (no revision) can be
// edited, which stores the tenant's own copy, but not deleted.
import { useState, type FormEvent } from "react";
import type { Persona } from "../../gen/skm/profiles/v1/persona_pb.js";
import { Revision_Origin } from "../../gen/skm/profiles/v1/revision_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api, newRequestId } from "../../lib/api";
import { Pager } from "./Pager";
import { enumLabel, lastSegment, Time } from "./format";
import { useCall, usePages } from "./useCall";

type Panel = { persona: string; kind: "revisions" | "edit" } | undefined;

interface Outcome {
  busy: boolean;
  error: unknown;
  done: string;
}

/** A write's progress, error and result sentence, shared by the forms of the section. */
function useOutcome() {
  const [state, setState] = useState<Outcome>({ busy: false, error: undefined, done: "" });
  const run = async (work: () => Promise<string>): Promise<boolean> => {
    setState({ busy: true, error: undefined, done: "" });
    try {
      const done = await work();
      setState({ busy: false, error: undefined, done });
      return true;
    } catch (error) {
      setState({ busy: false, error, done: "" });
      return false;
    }
  };
  return { ...state, run };
}

function isBuiltIn(persona: Persona): boolean {
  return !persona.revision;
}

function fromBundle(persona: Persona): boolean {
  return persona.bundleVersion > 0n;
}

function InstallBundle({ parent, onInstalled }: { parent: string; onInstalled(): Promise<void> }) {
  const [file, setFile] = useState<File>();
  // One idempotency key per chosen file: a retried install returns the first one's persona.
  const [requestId, setRequestId] = useState("");
  const outcome = useOutcome();

  const install = (event: FormEvent) => {
    event.preventDefault();
    if (!file) return;
    void outcome.run(async () => {
      const bundle = new Uint8Array(await file.arrayBuffer());
      const reply = await api.personas.installPersonaBundle({ parent, bundle, requestId });
      await onInstalled();
      const persona = reply.persona;
      if (!persona) return "Installed.";
      return `Installed ${persona.displayName || lastSegment(persona.name)} (${lastSegment(persona.name)}), bundle version ${persona.bundleVersion}, as revision ${persona.revision?.revisionId ?? "?"}.`;
    });
  };

  return (
    <form className="stack admin-install" onSubmit={install}>
      <h3>Install or upgrade from a bundle</h3>
      <p className="muted small">
        A bundle file signed by a publisher this tenant trusts (<code>skm persona sign</code>). A bundle of a persona
        installed before upgrades it, if its version is newer.
      </p>
      <div className="row">
        <label htmlFor="persona-bundle">Persona bundle</label>
        <input
          id="persona-bundle"
          type="file"
          onChange={(event) => {
            setFile(event.target.files?.[0]);
            setRequestId(newRequestId());
          }}
        />
        <button type="submit" className="btn btn-primary" disabled={!file || outcome.busy}>
          Install bundle
        </button>
      </div>
      <ErrorBanner error={outcome.error} />
      <p role="status" className="small">
        {outcome.done}
      </p>
    </form>
  );
}

function Revisions({ persona, onChanged }: { persona: Persona; onChanged(): Promise<void> }) {
  const pages = usePages();
  const list = useCall(
    () => api.personas.listPersonaRevisions({ name: persona.name, pageSize: 20, pageToken: pages.token }),
    [persona.name, persona.etag, pages.token],
  );
  const outcome = useOutcome();
  const current = persona.revision?.revisionId;

  const rollBack = (revisionId: string) =>
    void outcome.run(async () => {
      const reply = await api.personas.rollbackPersona({ name: persona.name, revisionId, etag: persona.etag });
      await onChanged();
      return `Rolled back to revision ${revisionId}: the persona is now revision ${reply.persona?.revision?.revisionId ?? "?"}.`;
    });

  const revisions = list.data?.personas ?? [];
  return (
    <div className="stack">
      <ErrorBanner error={list.error} />
      {list.data && revisions.length === 0 && <p className="muted">No revision: a built-in persona has none.</p>}
      {revisions.length > 0 && (
        <div className="admin-scroll-x">
        <table className="table admin-table">
          <caption className="muted small">Revisions of {persona.displayName || lastSegment(persona.name)}, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Revision</th>
              <th scope="col">Made</th>
              <th scope="col">How</th>
              <th scope="col">By</th>
              <th scope="col">Why</th>
              <th scope="col">Bundle version</th>
              <th scope="col">
                <span className="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {revisions.map((revision) => {
              const id = revision.revision?.revisionId ?? "";
              return (
                <tr key={id}>
                  <th scope="row" id={`rev-${lastSegment(persona.name)}-${id}`}>
                    {id}
                    {id === current && <span className="badge badge-info"> current</span>}
                  </th>
                  <td>
                    <Time ts={revision.revision?.createTime} mode="absolute" />
                  </td>
                  <td>{enumLabel(Revision_Origin, revision.revision?.origin ?? 0)}</td>
                  <td className="small">{revision.revision?.author ? lastSegment(revision.revision.author) : "—"}</td>
                  <td className="small">{revision.revision?.note || "—"}</td>
                  <td>{revision.bundleVersion > 0n ? String(revision.bundleVersion) : "—"}</td>
                  <td>
                    {id !== current && (
                      <button
                        type="button"
                        className="btn btn-small"
                        disabled={outcome.busy}
                        aria-describedby={`rev-${lastSegment(persona.name)}-${id}`}
                        onClick={() => rollBack(id)}
                      >
                        Roll back
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        </div>
      )}
      <Pager
        what="revisions"
        page={pages.page}
        hasNext={Boolean(list.data?.nextPageToken)}
        onPrevious={pages.previous}
        onNext={() => pages.next(list.data?.nextPageToken ?? "")}
      />
      <ErrorBanner error={outcome.error} />
      <p role="status" className="small">
        {outcome.done}
      </p>
    </div>
  );
}

const EDITABLE = [
  { field: "displayName", path: "display_name", label: "Display name" },
  { field: "tone", path: "tone", label: "Tone" },
  { field: "systemPrompt", path: "system_prompt", label: "System prompt" },
] as const;

function Editor({ persona, onSaved }: { persona: Persona; onSaved(): Promise<void> }) {
  const [values, setValues] = useState({
    displayName: persona.displayName,
    tone: persona.tone,
    systemPrompt: persona.systemPrompt,
  });
  const outcome = useOutcome();
  const changed = EDITABLE.filter((e) => values[e.field] !== persona[e.field]);
  const base = lastSegment(persona.name);

  const save = (event: FormEvent) => {
    event.preventDefault();
    void outcome.run(async () => {
      const reply = await api.personas.updatePersona({
        persona: { ...persona, ...values },
        updateMask: { paths: changed.map((e) => e.path) },
      });
      await onSaved();
      return `Saved as revision ${reply.persona?.revision?.revisionId ?? "?"}.`;
    });
  };

  return (
    <form className="stack" onSubmit={save}>
      {persona.signature.length > 0 && (
        <p className="small muted">
          This persona is signed. A change clears the signature, and unsigned personas run only in DEVELOPER mode.
        </p>
      )}
      {EDITABLE.map((e) => (
        <div key={e.field} className="stack">
          <label htmlFor={`edit-${base}-${e.field}`}>{e.label}</label>
          {e.field === "systemPrompt" ? (
            <textarea
              id={`edit-${base}-${e.field}`}
              rows={8}
              value={values[e.field]}
              onChange={(event) => setValues((v) => ({ ...v, [e.field]: event.target.value }))}
            />
          ) : (
            <input
              id={`edit-${base}-${e.field}`}
              value={values[e.field]}
              onChange={(event) => setValues((v) => ({ ...v, [e.field]: event.target.value }))}
            />
          )}
        </div>
      ))}
      <div>
        <button type="submit" className="btn btn-primary" disabled={changed.length === 0 || outcome.busy}>
          Save persona
        </button>
      </div>
      <ErrorBanner error={outcome.error} />
      <p role="status" className="small">
        {outcome.done}
      </p>
    </form>
  );
}

function TrustedKeys({ parent }: { parent: string }) {
  const keys = useCall(() => api.personas.listTrustedKeys({ parent, pageSize: 100 }), [parent]);
  const list = keys.data?.trustedKeys ?? [];
  return (
    <div className="stack">
      <h3>Trusted publisher keys</h3>
      <ErrorBanner error={keys.error} />
      {keys.data && list.length === 0 && (
        <p className="muted small">
          No trusted key: no bundle can be installed until an admin trusts one (<code>skm keys trust</code>).
        </p>
      )}
      {list.length > 0 && (
        <ul className="small">
          {list.map((k) => (
            <li key={k.name}>
              <code>{lastSegment(k.name)}</code> {k.displayName && `(${k.displayName})`}, expires{" "}
              <Time ts={k.expireTime} mode="absolute" />
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function PersonasSection({ tenant }: { tenant: string }) {
  const pages = usePages();
  const list = useCall(
    () => api.personas.listPersonas({ parent: tenant, pageSize: 50, pageToken: pages.token }),
    [tenant, pages.token],
  );
  const [panel, setPanel] = useState<Panel>();
  const outcome = useOutcome();

  const toggle = (persona: string, kind: "revisions" | "edit") =>
    setPanel((p) => (p?.persona === persona && p.kind === kind ? undefined : { persona, kind }));

  const removeOne = (persona: Persona) =>
    void outcome.run(async () => {
      if (fromBundle(persona)) await api.personas.uninstallPersona({ name: persona.name, etag: persona.etag });
      else await api.personas.deletePersona({ name: persona.name, etag: persona.etag });
      setPanel(undefined);
      await list.reload();
      return `${fromBundle(persona) ? "Uninstalled" : "Deleted"} ${persona.displayName || lastSegment(persona.name)}; sessions that use one of its revisions keep running it.`;
    });

  const personas = list.data?.personas ?? [];
  return (
    <section className="card stack admin-section">
      <h2>Personas</h2>
      <ErrorBanner error={list.error} />
      {list.data && personas.length === 0 && <p className="muted">This tenant has no persona.</p>}
      {personas.length > 0 && (
        <div className="admin-scroll-x">
          <table className="table admin-table">
            <thead>
              <tr>
                <th scope="col">Persona</th>
                <th scope="col">Revision</th>
                <th scope="col">Bundle version</th>
                <th scope="col">Signed by</th>
                <th scope="col">Changed</th>
                <th scope="col">
                  <span className="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {personas.map((persona) => {
                const id = lastSegment(persona.name);
                const open = panel?.persona === persona.name ? panel.kind : undefined;
                return (
                  <PersonaRows
                    key={persona.name}
                    persona={persona}
                    id={id}
                    open={open}
                    busy={outcome.busy}
                    onToggle={(kind) => toggle(persona.name, kind)}
                    onRemove={() => removeOne(persona)}
                    onChanged={list.reload}
                  />
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      <Pager
        what="personas"
        page={pages.page}
        hasNext={Boolean(list.data?.nextPageToken)}
        onPrevious={pages.previous}
        onNext={() => pages.next(list.data?.nextPageToken ?? "")}
      />
      <ErrorBanner error={outcome.error} />
      <p role="status" className="small">
        {outcome.done}
      </p>
      <InstallBundle parent={tenant} onInstalled={list.reload} />
      <TrustedKeys parent={tenant} />
    </section>
  );
}

function PersonaRows({
  persona,
  id,
  open,
  busy,
  onToggle,
  onRemove,
  onChanged,
}: {
  persona: Persona;
  id: string;
  open: "revisions" | "edit" | undefined;
  busy: boolean;
  onToggle(kind: "revisions" | "edit"): void;
  onRemove(): void;
  onChanged(): Promise<void>;
}) {
  const panelId = `persona-panel-${id}`;
  return (
    <>
      <tr>
        <th scope="row" id={`persona-${id}`}>
          <strong>{persona.displayName || id}</strong> <span className="mono small muted">{id}</span>
          {isBuiltIn(persona) && (
            <>
              {" "}
              <span className="badge badge-info">built-in</span>
            </>
          )}
        </th>
        <td>{persona.revision?.revisionId ?? "—"}</td>
        <td>{fromBundle(persona) ? String(persona.bundleVersion) : "—"}</td>
        <td className="small">{persona.signingKey || <span className="muted">unsigned</span>}</td>
        <td>
          <Time ts={persona.updateTime} />
        </td>
        <td>
          <div className="row">
            <button
              type="button"
              className="btn btn-small"
              aria-expanded={open === "revisions"}
              aria-controls={open === "revisions" ? panelId : undefined}
              aria-describedby={`persona-${id}`}
              onClick={() => onToggle("revisions")}
            >
              Revisions
            </button>
            <button
              type="button"
              className="btn btn-small"
              aria-expanded={open === "edit"}
              aria-controls={open === "edit" ? panelId : undefined}
              aria-describedby={`persona-${id}`}
              onClick={() => onToggle("edit")}
            >
              Edit
            </button>
            {!isBuiltIn(persona) && (
              <button
                type="button"
                className="btn btn-small btn-danger"
                disabled={busy}
                aria-describedby={`persona-${id}`}
                onClick={onRemove}
              >
                {fromBundle(persona) ? "Uninstall" : "Delete"}
              </button>
            )}
          </div>
        </td>
      </tr>
      {open && (
        <tr>
          <td colSpan={6} id={panelId}>
            {open === "revisions" ? (
              <Revisions persona={persona} onChanged={onChanged} />
            ) : (
              <Editor persona={persona} onSaved={onChanged} />
            )}
          </td>
        </tr>
      )}
    </>
  );
}
