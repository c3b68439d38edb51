// The session workspace (#/sessions, #/sessions/<id>, #/sessions/new[?persona=NAME]):
// the list of sessions on the left, the chosen one's live transcript, message box and turn
// controls on the right, and the view's palette actions.
import { useCallback, useEffect, useRef, useState } from "react";
import type { Session } from "../gen/skm/conversation/v1/session_pb.js";
import type { Persona } from "../gen/skm/profiles/v1/persona_pb.js";
import { DeploymentMode } from "../gen/skm/type/v1/deployment_mode_pb.js";
import { ErrorBanner } from "../components/ErrorBanner";
import { api, newRequestId } from "../lib/api";
import { tenantName, useClaims } from "../lib/auth";
import { usePaletteActions } from "../lib/palette";
import { navigate } from "../lib/router";
import { lastSegment, personaName } from "./sessions/format";
import { usePersonas, useSessionList } from "./sessions/lists";
import { retrying } from "./sessions/retry";
import { SessionPane, type PaneApi } from "./sessions/SessionPane";
import { SessionSidebar } from "./sessions/SessionSidebar";
import type { ViewProps } from "./types";
import "./sessions/sessions.css";

/** The persona a new session gets when none is named: "default" (as `skm chat`), else the first. */
function defaultPersona(personas: Persona[], parent: string): string {
  const named = personas.find((p) => lastSegment(p.name) === "default") ?? personas[0];
  return named ? named.name : `${parent}/personas/default`;
}

const MODE_WORDS: Record<string, DeploymentMode> = {
  developer: DeploymentMode.DEVELOPER,
  test: DeploymentMode.TEST,
  production: DeploymentMode.PRODUCTION,
};

export default function Sessions({ route }: ViewProps) {
  const claims = useClaims();
  const parent = tenantName(claims);
  const list = useSessionList(parent);
  const personas = usePersonas(parent);
  const [picked, setPicked] = useState("");
  const [mode, setMode] = useState<DeploymentMode>(DeploymentMode.DEVELOPER);
  const [creating, setCreating] = useState(false);
  const [createError, setCreateError] = useState<unknown>(null);
  const pane = useRef<PaneApi | null>(null);
  const started = useRef<string | null>(null);

  const sub = route.parts[1] ?? "";
  const isNew = sub === "new";
  const selectedId = isNew ? "" : sub;
  const persona = picked || defaultPersona(personas.personas, parent);
  const { upsert } = list;

  /** CreateSession, then the new session's route; `replace` keeps "new" out of the history. */
  const create = useCallback(
    async (who: string, how: DeploymentMode, requestId: string, replace: boolean) => {
      setCreating(true);
      setCreateError(null);
      try {
        const reply = await retrying(() =>
          api.conversation.createSession({ parent, session: { persona: personaName(parent, who), mode: how }, requestId }),
        );
        const session = reply.session;
        if (!session) throw new Error("CreateSession answered without a session");
        upsert(session);
        const target = `#/sessions/${lastSegment(session.name)}`;
        // location.replace: Back must not land on #/sessions/new and create yet another one.
        if (!replace) navigate(target);
        else if (window.location.hash.startsWith("#/sessions/new")) window.location.replace(target);
      } catch (err) {
        setCreateError(err);
        throw err;
      } finally {
        setCreating(false);
      }
    },
    [parent, upsert],
  );

  // #/sessions/new[?persona=NAME][&mode=developer]: once per visit; the request_id makes a
  // repeated effect (StrictMode) return the same session instead of a second one.
  useEffect(() => {
    if (!isNew) {
      started.current = null;
      return;
    }
    const named = route.query.get("persona") ?? "";
    if (!named && !personas.settled) return; // the default persona is not known yet
    const key = window.location.hash;
    if (started.current === key) return;
    started.current = key;
    const how = MODE_WORDS[(route.query.get("mode") ?? "").toLowerCase()] ?? mode;
    create(named || persona, how, newRequestId(), true).catch(() => {
      // Shown by createError.
    });
  }, [isNew, route.query, personas.settled, persona, mode, create]);

  const need = (): PaneApi => {
    if (!pane.current) throw new Error("open a session first");
    return pane.current;
  };

  usePaletteActions("sessions", [
    {
      id: "sessions-new",
      title: "New session",
      group: "Session",
      keywords: `create start chat ${lastSegment(persona)}`,
      run: () => create(persona, mode, newRequestId(), false),
    },
    {
      id: "sessions-interrupt",
      title: "Interrupt the running turn",
      group: "Session",
      keywords: "stop cancel halt",
      run: () => need().interrupt(),
    },
    {
      id: "sessions-rerun",
      title: "Rerun with a larger model",
      group: "Session",
      keywords: "retry escalate tier bigger",
      run: () => need().rerun(),
    },
    {
      id: "sessions-focus",
      title: "Focus the message box",
      group: "Session",
      keywords: "type write compose message",
      run: () => need().focusMessage(),
    },
  ]);

  const onSession = useCallback((session: Session) => upsert(session), [upsert]);

  return (
    <div className="sessions-view">
      <h1>Sessions</h1>
      <div className="split sessions-split">
        <SessionSidebar
          list={list}
          personas={personas}
          persona={persona}
          onPersona={setPicked}
          mode={mode}
          onMode={setMode}
          selectedId={selectedId}
          creating={creating}
          onNew={() => {
            create(persona, mode, newRequestId(), false).catch(() => {
              // Shown by createError.
            });
          }}
        />
        <div className="sess-main stack">
          <ErrorBanner error={createError} onDismiss={() => setCreateError(null)} />
          {isNew && creating && (
            <p className="muted" role="status">
              Creating a session as {lastSegment(route.query.get("persona") || persona)}…
            </p>
          )}
          {selectedId ? (
            <SessionPane key={selectedId} name={`${parent}/sessions/${selectedId}`} apiRef={pane} onSession={onSession} />
          ) : (
            !isNew && <p className="muted">Choose a session on the left, or start a new one.</p>
          )}
        </div>
      </div>
    </div>
  );
}
