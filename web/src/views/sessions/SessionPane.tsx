// The right column: one session's header, its live transcript, the message box, and the
// send-to-first-token measurement. It also hands the palette what it can do (PaneApi).
import { useEffect, useLayoutEffect, useRef, useState, type RefObject } from "react";
import type { Session } from "../../gen/skm/conversation/v1/session_pb.js";
import { Session_State } from "../../gen/skm/conversation/v1/session_pb.js";
import { Turn_State, type Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { summary } from "../../lib/errors";
import { canInterrupt, canRerun, interruptTurn, rerunTurn } from "./commands";
import { isTurnActive, lastSegment, sessionStateName, stateBadgeClass, when, words } from "./format";
import { DeploymentMode } from "../../gen/skm/type/v1/deployment_mode_pb.js";
import { Composer } from "./Composer";
import { sessionTitle } from "./SessionSidebar";
import { TurnBlock } from "./TurnBlock";
import { currentTurn, type Transcript } from "./transcript";
import { useSessionFeed, type Link } from "./useSessionFeed";

/** What the view's palette actions call on the shown session. */
export interface PaneApi {
  interrupt(): Promise<void>;
  rerun(): Promise<void>;
  focusMessage(): void;
}

interface Pending {
  requestId: string;
  at: number;
  turn?: string;
  done: boolean;
}

/** Send pressed -> first TokenDelta of that turn rendered, in ms; also on window.__skmMetrics. */
function useFirstTokenMetric(transcript: Transcript) {
  const pending = useRef<Pending | null>(null);
  const [byTurn, setByTurn] = useState<Record<string, number>>({});

  useEffect(() => {
    const p = pending.current;
    if (!p || p.done) return;
    if (!p.turn) {
      // The turn carries the request_id it was sent with: found even before SendMessage answers.
      p.turn = transcript.order.find((name) => transcript.turns[name]?.user?.value.requestId === p.requestId);
    }
    const turn = p.turn ? transcript.turns[p.turn] : undefined;
    if (!turn || turn.firstDelta === undefined) return;
    // This effect runs after the render that put the first token on screen.
    const ms = performance.now() - p.at;
    p.done = true;
    setByTurn((old) => ({ ...old, [turn.name]: ms }));
    const holder = window as unknown as { __skmMetrics?: Record<string, unknown> };
    holder.__skmMetrics ??= {};
    holder.__skmMetrics.sendToFirstTokenMs = ms;
    holder.__skmMetrics.sendToFirstTokenTurn = turn.name;
  }, [transcript]);

  return {
    byTurn,
    start(requestId: string) {
      pending.current = { requestId, at: performance.now(), done: false };
    },
    sent(requestId: string, turn: Turn | undefined) {
      const p = pending.current;
      if (p && p.requestId === requestId && turn) {
        p.turn = turn.name;
        const holder = window as unknown as { __skmMetrics?: Record<string, unknown> };
        holder.__skmMetrics ??= {};
        holder.__skmMetrics.sendMessageRpcMs = performance.now() - p.at;
      }
    },
  };
}

function LinkStatus({ link }: { link: Link }) {
  const text =
    link.phase === "loading"
      ? "Loading the transcript…"
      : link.phase === "connecting"
        ? "Connecting…"
        : link.phase === "live"
          ? "Live"
          : link.phase === "reconnecting"
            ? `Reconnecting… (try ${link.attempt})`
            : link.phase === "stopped"
              ? "Not following: see the error"
              : "";
  return (
    <p className={`sess-link sess-link-${link.phase} small`} role="status">
      {text}
      {link.phase === "reconnecting" && link.problem !== null && (
        <span className="muted"> last: {summary(link.problem)}</span>
      )}
    </p>
  );
}

function Header({ session, name, state, link }: { session: Session | null; name: string; state: string; link: Link }) {
  return (
    <header className="sess-header">
      <div className="row">
        <h2>{session ? sessionTitle(session) : `Session ${lastSegment(name).slice(0, 8)}`}</h2>
        <span className={stateBadgeClass(state)}>
          <span className="visually-hidden">Session state: </span>
          {words(state)}
        </span>
        <span className="spacer" />
        <LinkStatus link={link} />
      </div>
      {session && (
        <dl className="kv small">
          <div>
            <dt>Persona</dt>
            <dd className="mono" title={session.persona}>
              {lastSegment(session.persona)}
              {session.personaRevisionId && `@${session.personaRevisionId}`}
            </dd>
          </div>
          <div>
            <dt>Mode</dt>
            <dd>{words(DeploymentMode[session.mode] ?? "UNSPECIFIED")}</dd>
          </div>
          <div>
            <dt>Created</dt>
            <dd>{when(session.createTime)}</dd>
          </div>
          <div>
            <dt>Id</dt>
            <dd className="mono">{lastSegment(session.name)}</dd>
          </div>
          {session.superiorSession && (
            <div>
              <dt>Started by</dt>
              <dd>
                <a href={`#/sessions/${lastSegment(session.superiorSession)}`}>session {lastSegment(session.superiorSession)}</a>
              </dd>
            </div>
          )}
        </dl>
      )}
    </header>
  );
}

/** The session's state as the newest turn says it (fresher than the GetSession snapshot). */
function liveState(session: Session | null, transcript: Transcript): string {
  const turn = currentTurn(transcript);
  if (!turn || turn.state === Turn_State.UNSPECIFIED) return sessionStateName(session?.state ?? Session_State.UNSPECIFIED);
  if (turn.state === Turn_State.RUNNING) return "RUNNING";
  if (turn.state === Turn_State.AWAITING_APPROVAL) return "AWAITING_APPROVAL";
  if (turn.state === Turn_State.INTERRUPTED) return "INTERRUPTED";
  return "IDLE";
}

export function SessionPane({
  name,
  apiRef,
  onSession,
}: {
  name: string;
  apiRef: RefObject<PaneApi | null>;
  onSession: (session: Session) => void;
}) {
  const feed = useSessionFeed(name);
  const { transcript, session } = feed;
  const metric = useFirstTokenMetric(transcript);
  const messageRef = useRef<HTMLTextAreaElement>(null);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const current = currentTurn(transcript);
  const state = liveState(session, transcript);

  useEffect(() => {
    if (session) onSession({ ...session, state: Session_State[state as keyof typeof Session_State] ?? session.state });
  }, [session, state, onSession]);

  // Follow the bottom while the reader is there; leave them be when they scrolled up.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [transcript]);

  useEffect(() => {
    apiRef.current = {
      async interrupt() {
        if (!current || !canInterrupt(current.state)) throw new Error("no turn of this session is running");
        feed.addTurn(await interruptTurn(current.name));
      },
      async rerun() {
        if (!current || !canRerun(current.state)) throw new Error("the current turn cannot be rerun now (none, or it is running)");
        feed.addTurn(await rerunTurn(current.name));
      },
      focusMessage() {
        const box = messageRef.current;
        if (!box) throw new Error("this session has no message box");
        box.focus();
        // The palette hands focus back to where it was as it closes, right after this
        // action: take it back that once.
        const retake = (event: FocusEvent) => {
          if (event.target !== box) box.focus();
        };
        document.addEventListener("focusin", retake, { once: true });
        setTimeout(() => document.removeEventListener("focusin", retake), 500);
      },
    };
    return () => {
      apiRef.current = null;
    };
  });

  const blocked = current && isTurnActive(current.state) ? `Turn ${current.ordinal} is ${words(state)}: interrupt it or wait.` : "";

  return (
    <section className="sess-pane card" aria-label="Session">
      <Header session={session} name={name} state={state} link={feed.link} />
      {feed.error !== null && (
        <div className="row">
          <ErrorBanner error={feed.error} />
          <button type="button" className="btn btn-small" onClick={feed.reload}>
            Retry
          </button>
        </div>
      )}
      <div
        className="sess-transcript"
        ref={scroller}
        tabIndex={0}
        role="region"
        aria-label="Transcript"
        onScroll={(event) => {
          const el = event.currentTarget;
          stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
        }}
      >
        {transcript.order.map((turnName) => (
          <TurnBlock
            key={turnName}
            turn={transcript.turns[turnName]}
            current={turnName === current?.name}
            firstTokenMs={metric.byTurn[turnName]}
            onTurn={feed.addTurn}
          />
        ))}
        {transcript.order.length === 0 && feed.link.phase !== "loading" && feed.error === null && (
          <p className="muted">No messages yet: write the first one below.</p>
        )}
      </div>
      <Composer
        session={name}
        blocked={blocked}
        inputRef={messageRef}
        onSending={metric.start}
        onSent={(requestId, turn) => {
          metric.sent(requestId, turn);
          feed.addTurn(turn);
        }}
      />
    </section>
  );
}
