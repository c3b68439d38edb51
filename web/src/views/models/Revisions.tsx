// A profile's revisions, newest first, and rollback to one of them. A rollback is itself a
// new revision (history is never rewritten) and keeps auto mode as it is now.
import { useState } from "react";
import type { Model } from "../../gen/skm/profiles/v1/model_pb.js";
import type { ModelProfile } from "../../gen/skm/profiles/v1/model_profile_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { useLoad } from "./data";
import { formatTime, modelTitle, originTitle } from "./format";

const PAGE = 20;

interface Props {
  profile: ModelProfile;
  models: Model[] | undefined;
  onRolledBack(message: string): void;
}

export function Revisions({ profile, models, onRolledBack }: Props) {
  const [open, setOpen] = useState(false);
  const [pages, setPages] = useState(1);
  const [busy, setBusy] = useState("");
  const [error, setError] = useState<unknown>(null);
  const current = profile.revision?.revisionId ?? "";

  // Read only while open; the current revision in the deps reloads after any change.
  const revisions = useLoad(
    async (signal) => {
      if (!open) return { items: [] as ModelProfile[], more: false };
      const items: ModelProfile[] = [];
      let pageToken = "";
      for (let i = 0; i < pages; i++) {
        const reply = await api.modelProfiles.listModelProfileRevisions(
          { name: profile.name, pageSize: PAGE, pageToken },
          { signal },
        );
        items.push(...reply.modelProfiles);
        pageToken = reply.nextPageToken;
        if (!pageToken) break;
      }
      return { items, more: Boolean(pageToken) };
    },
    [open, pages, profile.name, current],
  );

  const rollback = async (revisionId: string) => {
    setBusy(revisionId);
    setError(null);
    try {
      const reply = await api.modelProfiles.rollbackModelProfile({ name: profile.name, revisionId, etag: profile.etag });
      onRolledBack(
        `Rolled back to revision ${revisionId}: now revision ${reply.modelProfile?.revision?.revisionId ?? "?"}.`,
      );
    } catch (e) {
      setError(e);
    } finally {
      setBusy("");
    }
  };

  const items = revisions.data?.items ?? [];

  return (
    <details className="models-revisions" onToggle={(e) => setOpen(e.currentTarget.open)}>
      <summary>Revisions</summary>
      {open && revisions.loading && (
        <p className="muted small" role="status">
          Loading revisions…
        </p>
      )}
      <ErrorBanner error={revisions.error} />
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {open && !revisions.loading && !revisions.error && items.length === 0 && (
        <p className="muted small">No revisions.</p>
      )}
      {items.length > 0 && (
        <div className="models-scroll">
          <table className="table small">
            <caption className="visually-hidden">Revisions of {profile.name}</caption>
            <thead>
              <tr>
                <th scope="col">Revision</th>
                <th scope="col">Made</th>
                <th scope="col">Origin</th>
                <th scope="col">By</th>
                <th scope="col">Tiers</th>
                <th scope="col">Auto mode</th>
                <th scope="col">Note</th>
                <th scope="col">
                  <span className="visually-hidden">Action</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((r) => {
                const id = r.revision?.revisionId ?? "";
                return (
                  <tr key={id}>
                    <td>
                      {id}
                      {id === current && (
                        <>
                          {" "}
                          <span className="badge badge-info">current</span>
                        </>
                      )}
                    </td>
                    <td>{formatTime(r.revision?.createTime)}</td>
                    <td>{r.revision ? originTitle(r.revision.origin) : ""}</td>
                    <td className="mono">{r.revision?.author}</td>
                    <td>
                      {r.modelTiers.map((t, i) => (
                        <div key={t} title={modelTitle(t, models)}>
                          {i}: <code>{t.replace(/^models\//, "")}</code>
                        </div>
                      ))}
                    </td>
                    <td>{r.autoSelect ? "on" : "off"}</td>
                    <td>{r.revision?.note}</td>
                    <td>
                      {id && id !== current && (
                        <button
                          type="button"
                          className="btn btn-small models-nowrap"
                          disabled={busy !== ""}
                          onClick={() => void rollback(id)}
                        >
                          Roll back to revision {id}
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
      {revisions.data?.more && (
        <button type="button" className="btn btn-small" onClick={() => setPages((p) => p + 1)}>
          Show older revisions
        </button>
      )}
    </details>
  );
}
