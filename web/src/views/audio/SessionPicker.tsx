// Which session the voice talks in: the caller's sessions (ConversationService.ListSessions,
// most recently updated first) and a "New session" entry that creates one, as the persona
// chosen next to it, in DEVELOPER mode (the mode that runs unsigned built-in personas too).
// "Start talking" with no session chosen makes a new one the same way (useSessionChoice).
import { useCallback, useEffect, useRef, useState } from "react";
import type { Session } from "../../gen/skm/conversation/v1/session_pb.js";
import type { Persona } from "../../gen/skm/profiles/v1/persona_pb.js";
import { DeploymentMode } from "../../gen/skm/type/v1/deployment_mode_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api, newRequestId } from "../../lib/api";

const NEW = "__new__";
const PAGE = 100;
// The persona a new session gets when none is chosen (the CLI's default too).
const DEFAULT_PERSONA = "default";

function lastPart(name: string): string {
  return name.split("/").pop() ?? name;
}

function label(session: Session): string {
  const title = session.displayName || lastPart(session.name);
  return `${title} (${lastPart(session.persona)})`;
}

/** The full resource name for what a link may carry: an id or "tenants/…/sessions/…". */
function sessionName(parent: string, idOrName: string): string {
  return idOrName.startsWith("tenants/") ? idOrName : `${parent}/sessions/${idOrName}`;
}

export interface SessionChoice {
  sessions: Session[];
  personas: Persona[];
  /** The persona of the next new session, "tenants/{tenant}/personas/{persona}". */
  persona: string;
  setPersona(name: string): void;
  loading: boolean;
  creating: boolean;
  error: unknown;
  clearError(): void;
  /** Creates a session as `persona` and selects it; rejects with the service's error. */
  create(): Promise<Session>;
}

/**
 * The sessions and personas of the tenant. `wanted` (from the route) is selected once the
 * list is in; `onSelect` is called with every session chosen or made.
 */
export function useSessionChoice(parent: string, wanted: string, onSelect: (session: Session) => void): SessionChoice {
  const [sessions, setSessions] = useState<Session[]>([]);
  const [personas, setPersonas] = useState<Persona[]>([]);
  const [persona, setPersona] = useState("");
  const [loading, setLoading] = useState(true);
  const [creating, setCreating] = useState(false);
  const [error, setError] = useState<unknown>(null);
  // Read when the list arrives, not a reason to list again.
  const select = useRef(onSelect);
  select.current = onSelect;
  const firstWanted = useRef(wanted);

  useEffect(() => {
    let live = true;
    setLoading(true);
    const name = firstWanted.current ? sessionName(parent, firstWanted.current) : "";
    const listed = api.conversation.listSessions({ parent, pageSize: PAGE }).then(async (reply) => {
      let found = reply.sessions;
      if (name && !found.some((s) => s.name === name)) {
        // Not among the newest: ask for it by name (an operator may open another user's).
        const one = await api.conversation.getSession({ name });
        if (one.session) found = [one.session, ...found];
      }
      if (!live) return;
      setSessions((made) => [...made.filter((m) => !found.some((s) => s.name === m.name)), ...found]);
      const pick = found.find((s) => s.name === name);
      if (pick) select.current(pick);
    });
    const people = api.personas.listPersonas({ parent, pageSize: PAGE }).then((reply) => {
      if (!live) return;
      setPersonas(reply.personas);
      const preferred = reply.personas.find((p) => lastPart(p.name) === DEFAULT_PERSONA) ?? reply.personas[0];
      setPersona((current) => current || preferred?.name || "");
    });
    Promise.all([listed, people])
      .catch((e: unknown) => live && setError(e))
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
    };
  }, [parent]);

  const create = useCallback(async () => {
    setCreating(true);
    setError(null);
    try {
      const reply = await api.conversation.createSession({
        parent,
        session: {
          persona: persona || `${parent}/personas/${DEFAULT_PERSONA}`,
          mode: DeploymentMode.DEVELOPER,
          displayName: `Voice ${new Date().toLocaleString()}`,
        },
        requestId: newRequestId(),
      });
      const made = reply.session;
      if (!made) throw new Error("CreateSession answered without the session");
      setSessions((list) => [made, ...list.filter((s) => s.name !== made.name)]);
      select.current(made);
      return made;
    } catch (e) {
      setError(e);
      throw e;
    } finally {
      setCreating(false);
    }
  }, [parent, persona]);

  return {
    sessions,
    personas,
    persona,
    setPersona,
    loading,
    creating,
    error,
    clearError: useCallback(() => setError(null), []),
    create,
  };
}

export function SessionPicker({
  choice,
  selected,
  disabled,
  onSelect,
}: {
  choice: SessionChoice;
  selected: Session | undefined;
  disabled: boolean;
  onSelect(session: Session): void;
}) {
  const { sessions, personas, persona, loading, creating } = choice;
  return (
    <div className="stack">
      <div className="voice-field">
        <label htmlFor="voice-session">Session</label>
        <select
          id="voice-session"
          value={selected?.name ?? ""}
          disabled={disabled || creating}
          aria-busy={loading || creating}
          aria-describedby="voice-session-help"
          onChange={(event) => {
            const value = event.target.value;
            if (value === NEW) void choice.create().catch(() => undefined); // shown by the banner below
            else {
              const pick = sessions.find((s) => s.name === value);
              if (pick) onSelect(pick);
            }
          }}
        >
          <option value="" disabled>
            {creating ? "Creating a session…" : loading ? "Loading sessions…" : "Choose a session"}
          </option>
          <option value={NEW}>New session</option>
          {sessions.map((session) => (
            <option key={session.name} value={session.name}>
              {label(session)}
            </option>
          ))}
        </select>
        <span id="voice-session-help" className="small muted">
          With none chosen, Start talking makes a new one.
        </span>
      </div>
      <div className="voice-field">
        <label htmlFor="voice-new-persona">Persona</label>
        <select
          id="voice-new-persona"
          aria-describedby="voice-new-persona-help"
          value={persona}
          disabled={disabled || creating || personas.length === 0}
          onChange={(event) => choice.setPersona(event.target.value)}
        >
          {personas.length === 0 && <option value="">{loading ? "Loading personas…" : DEFAULT_PERSONA}</option>}
          {personas.map((p) => (
            <option key={p.name} value={p.name}>
              {p.displayName || lastPart(p.name)}
            </option>
          ))}
        </select>
        <span id="voice-new-persona-help" className="small muted">
          The agent a new session runs as.
        </span>
      </div>
      <ErrorBanner error={choice.error} onDismiss={choice.clearError} />
    </div>
  );
}
