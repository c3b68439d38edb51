// A session's transcript, kept current: the history from ListTurns + ListTurnEvents, then
// StreamEvents from the highest sequence seen, re-attached with backoff whenever the stream
// ends or breaks (server restart, network drop, Envoy's idle timeout). Every event is
// rendered once: sequences already seen are dropped, so a replay after a re-attach or an
// overlap between history and stream never shows twice.
import { useCallback, useEffect, useReducer, useRef, useState } from "react";
import { Code, ConnectError } from "@connectrpc/connect";
import type { SessionEvent } from "../../gen/skm/conversation/v1/session_event_pb.js";
import type { Session } from "../../gen/skm/conversation/v1/session_pb.js";
import type { Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { api } from "../../lib/api";
import { allPages } from "../../lib/pages";
import { describe } from "../../lib/errors";
import { backoff, pause, retrying } from "./retry";
import { EMPTY, reduce, type Transcript } from "./transcript";

export type LinkPhase = "idle" | "loading" | "connecting" | "live" | "reconnecting" | "stopped";

export interface Link {
  phase: LinkPhase;
  /** Re-attach attempts since the stream was last attached. */
  attempt: number;
  /** Why the last stream ended, when it broke (shown with the "reconnecting" status). */
  problem: unknown;
}

export interface Feed {
  session: Session | null;
  transcript: Transcript;
  link: Link;
  /** A failure that stopped the feed (shown with ErrorBanner; `reload` starts over). */
  error: unknown;
  reload(): void;
  /** A turn a command returned, shown at once even before its first event arrives. */
  addTurn(turn: Turn | undefined): void;
}

// Codes after which re-attaching cannot help: the session is gone, or the caller may not read it.
const FINAL = new Set([Code.NotFound, Code.PermissionDenied, Code.Unauthenticated, Code.InvalidArgument]);

function allTurns(parent: string, signal: AbortSignal): Promise<Turn[]> {
  return allPages(async (pageToken) => {
    const reply = await retrying(
      () => api.conversation.listTurns({ parent, pageSize: 1000, pageToken }, { signal }),
      signal,
    );
    return { items: reply.turns, next: reply.nextPageToken };
  });
}

function allTurnEvents(parent: string, signal: AbortSignal): Promise<SessionEvent[]> {
  return allPages(async (pageToken) => {
    const reply = await retrying(
      () => api.conversation.listTurnEvents({ parent, pageSize: 1000, pageToken }, { signal }),
      signal,
    );
    return { items: reply.events, next: reply.nextPageToken };
  });
}

/** Runs `work` over `items`, at most `width` at a time (a long session has many turns). */
async function pool<T>(items: T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) await work(items[next++]);
  });
  await Promise.all(lanes);
}

export function useSessionFeed(name: string | null): Feed {
  const [transcript, dispatch] = useReducer(reduce, EMPTY);
  const [session, setSession] = useState<Session | null>(null);
  const [link, setLink] = useState<Link>({ phase: "idle", attempt: 0, problem: null });
  const [error, setError] = useState<unknown>(null);
  const [reloads, setReloads] = useState(0);
  // Mutable on purpose: read and written by the stream loop, never rendered.
  const seen = useRef(new Set<bigint>());
  const cursor = useRef(0n);

  useEffect(() => {
    if (!name) return;
    const controller = new AbortController();
    const signal = controller.signal;
    seen.current = new Set();
    cursor.current = 0n;
    dispatch({ type: "reset" });
    setSession(null);
    setError(null);
    setLink({ phase: "loading", attempt: 0, problem: null });

    const accept = (events: SessionEvent[]) => {
      const fresh = events.filter((event) => !seen.current.has(event.sequence));
      if (fresh.length === 0) return;
      for (const event of fresh) {
        seen.current.add(event.sequence);
        if (event.sequence > cursor.current) cursor.current = event.sequence;
      }
      dispatch({ type: "events", events: fresh });
    };

    const history = async (): Promise<bigint> => {
      const reply = await retrying(() => api.conversation.getSession({ name }, { signal }), signal);
      setSession(reply.session ?? null);
      const snapshot = reply.session?.lastSequence ?? 0n;
      const turns = await allTurns(name, signal);
      dispatch({ type: "turns", turns });
      const events: SessionEvent[] = [];
      await pool(turns, 4, async (turn) => {
        events.push(...(await allTurnEvents(turn.name, signal)));
      });
      events.sort((a, b) => (a.sequence < b.sequence ? -1 : a.sequence > b.sequence ? 1 : 0));
      accept(events);
      // Attach from the older of the two marks: nothing after the session snapshot can be
      // missed, and what the history already showed is dropped as seen.
      return snapshot < cursor.current ? snapshot : cursor.current;
    };

    const follow = async (start: bigint) => {
      let after = start;
      let attempt = 0;
      for (;;) {
        setLink((old) => ({ phase: attempt === 0 ? "connecting" : "reconnecting", attempt, problem: old.problem }));
        let problem: unknown = null;
        try {
          const stream = api.conversation.streamEvents({ session: name, afterSequence: after }, { signal });
          for await (const message of stream) {
            if (message.response.case === "attached") {
              attempt = 0;
              if (message.response.value.session) setSession(message.response.value.session);
              setLink({ phase: "live", attempt: 0, problem: null });
            } else if (message.response.case === "event") {
              accept([message.response.value]);
            }
          }
          // A stream the server (or a proxy's idle timeout) closed cleanly: re-attach.
        } catch (err) {
          if (signal.aborted) return;
          if (err instanceof ConnectError && FINAL.has(err.code)) {
            setError(err);
            setLink({ phase: "stopped", attempt, problem: err });
            return;
          }
          if (err instanceof ConnectError && err.code === Code.OutOfRange) {
            // Our mark is past what the server stored (a process died with unstored token
            // deltas): go on from the newest stored event it names.
            const last = describe(err).metadata.last_sequence;
            if (last && /^\d+$/.test(last) && BigInt(last) < cursor.current) cursor.current = BigInt(last);
          }
          problem = err;
        }
        if (signal.aborted) return;
        after = cursor.current;
        attempt += 1;
        setLink({ phase: "reconnecting", attempt, problem });
        await pause(backoff(attempt), signal);
      }
    };

    (async () => {
      try {
        await follow(await history());
      } catch (err) {
        if (signal.aborted) return;
        setError(err);
        setLink({ phase: "stopped", attempt: 0, problem: err });
      }
    })();

    return () => controller.abort();
  }, [name, reloads]);

  const reload = useCallback(() => setReloads((n) => n + 1), []);
  const addTurn = useCallback((turn: Turn | undefined) => {
    if (turn) dispatch({ type: "turn", turn });
  }, []);

  return { session, transcript, link, error, reload, addTurn };
}
