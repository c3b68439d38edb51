// The left column: start a session (persona, mode), search what is loaded, and the list of
// sessions with "Load more" for the next page.
import { useMemo, useState } from "react";
import type { Session } from "../../gen/skm/conversation/v1/session_pb.js";
import { DeploymentMode } from "../../gen/skm/type/v1/deployment_mode_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { lastSegment, sessionStateName, stateBadgeClass, when, words } from "./format";
import type { PersonaList, SessionList } from "./lists";

export const MODES = [
  { value: DeploymentMode.DEVELOPER, label: "Developer (unsigned personas allowed)" },
  { value: DeploymentMode.TEST, label: "Test (signed personas only)" },
  { value: DeploymentMode.PRODUCTION, label: "Production (signed personas only)" },
];

export function sessionTitle(session: Session): string {
  return session.displayName || `Session ${lastSegment(session.name).slice(0, 8)}`;
}

function matches(session: Session, query: string): boolean {
  const haystack = `${session.displayName} ${session.name} ${session.persona}`.toLowerCase();
  return query
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => haystack.includes(word));
}

export function SessionSidebar({
  list,
  personas,
  persona,
  onPersona,
  mode,
  onMode,
  selectedId,
  creating,
  onNew,
}: {
  list: SessionList;
  personas: PersonaList;
  persona: string;
  onPersona: (name: string) => void;
  mode: DeploymentMode;
  onMode: (mode: DeploymentMode) => void;
  selectedId: string;
  creating: boolean;
  onNew: () => void;
}) {
  const [query, setQuery] = useState("");
  const shown = useMemo(() => list.sessions.filter((s) => matches(s, query)), [list.sessions, query]);

  return (
    <aside className="card sess-sidebar stack" aria-label="Session list">
      <form
        className="stack sess-new"
        onSubmit={(event) => {
          event.preventDefault();
          onNew();
        }}
      >
        <label htmlFor="sess-persona">Persona</label>
        <select
          id="sess-persona"
          value={persona}
          onChange={(event) => onPersona(event.target.value)}
          disabled={personas.personas.length === 0}
        >
          {personas.personas.length === 0 && <option value="">{personas.settled ? "no personas listed" : "loading…"}</option>}
          {personas.personas.map((p) => (
            <option key={p.name} value={p.name}>
              {p.displayName ? `${p.displayName} (${lastSegment(p.name)})` : lastSegment(p.name)}
            </option>
          ))}
        </select>
        <label htmlFor="sess-mode">Mode</label>
        <select id="sess-mode" value={mode} onChange={(event) => onMode(Number(event.target.value) as DeploymentMode)}>
          {MODES.map((m) => (
            <option key={m.value} value={m.value}>
              {m.label}
            </option>
          ))}
        </select>
        <button type="submit" className="btn btn-primary" disabled={creating}>
          New session
        </button>
        <ErrorBanner error={personas.error} />
      </form>

      <label htmlFor="sess-search">Search sessions</label>
      <input
        id="sess-search"
        type="search"
        value={query}
        onChange={(event) => setQuery(event.target.value)}
        placeholder="name, id or persona"
      />
      <div className="row">
        <h2 className="sess-list-title">Recent conversations</h2>
        <button type="button" className="btn btn-small" onClick={list.refresh} disabled={list.loading}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={list.error} />
      <ul className="sess-list" aria-busy={list.loading}>
        {shown.map((session) => {
          const id = lastSegment(session.name);
          const state = sessionStateName(session.state);
          return (
            <li key={session.name}>
              <a
                href={`#/sessions/${id}`}
                aria-current={id === selectedId ? "page" : undefined}
                className={id === selectedId ? "active" : undefined}
              >
                <span className="sess-list-name">{sessionTitle(session)}</span>
                <span className="small muted">
                  {lastSegment(session.persona)} · {when(session.updateTime)}
                </span>
                <span className={stateBadgeClass(state)}>{words(state)}</span>
              </a>
            </li>
          );
        })}
      </ul>
      {!list.loading && list.sessions.length === 0 && !list.error && <p className="muted small">No sessions yet.</p>}
      {list.sessions.length > 0 && shown.length === 0 && <p className="muted small">No loaded session matches.</p>}
      {list.loading && <p className="muted small">Loading sessions…</p>}
      {list.more && (
        <button type="button" className="btn btn-small" onClick={list.loadMore} disabled={list.loading}>
          Load more
        </button>
      )}
    </aside>
  );
}
