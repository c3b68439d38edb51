// The held calls (blocked actions) of a tenant, kept current without a reload.
//
// WatchBlockedActionResolutions only streams entries as they LEAVE PENDING (approved,
// rejected, expired, cancelled); new PENDING entries never come on it. So arrivals are found
// by listing again every 2 s while the page is visible (and at once when it becomes visible
// again), and the watch makes resolutions show without waiting for the next listing. The
// watch is opened again whenever it drops (Envoy closes a stream idle for 5 minutes), with
// a growing pause, except after an error that retrying cannot fix (e.g. PERMISSION_DENIED).
import { useCallback, useEffect, useRef, useState } from "react";
import { Code, ConnectError } from "@connectrpc/connect";
import { BlockedAction_State, type BlockedAction } from "../../gen/skm/policy/v1/blocked_action_pb.js";
import { api } from "../../lib/api";

export const POLL_MS = 2000;
const PAGE_SIZE = 50;
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;
// A watch call that has lasted this long without failing is taken as working again.
const SETTLED_MS = 5000;
const PERMANENT = new Set([
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.InvalidArgument,
  Code.NotFound,
  Code.Unimplemented,
]);

export type WatchStatus =
  | { kind: "watching" }
  | { kind: "retrying"; seconds: number }
  | { kind: "stopped" };

export interface HeldCalls {
  items: BlockedAction[];
  nextPageToken: string;
  /** The first listing of the current filter and page has answered (or failed). */
  loaded: boolean;
  error: unknown;
  /** Refreshing is paused after an error retrying cannot fix, until `reload` succeeds. */
  paused: boolean;
  watch: WatchStatus;
  watchError: unknown;
  reload(): Promise<void>;
  /** Show an entry as a decision left it (or drop it when the filter no longer includes it). */
  apply(action: BlockedAction): void;
  /** Open the watch again after it stopped. */
  reconnect(): void;
  /** Names decided from this page, whose resolutions need no second announcement. */
  decidedHere: Set<string>;
}

function isPermanent(error: unknown): boolean {
  return error instanceof ConnectError && PERMANENT.has(error.code);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * `states` must keep its identity between renders (a constant), `onNews` gets one sentence
 * per arrival or resolution seen, for the page's live region.
 */
export function useHeldCalls(
  parent: string,
  states: readonly BlockedAction_State[],
  pageToken: string,
  onNews: (text: string) => void,
  describeAction: (action: BlockedAction) => string,
): HeldCalls {
  const [items, setItems] = useState<BlockedAction[]>([]);
  const [nextPageToken, setNextPageToken] = useState("");
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>();
  const [paused, setPaused] = useState(false);
  const pausedRef = useRef(false);
  const [watch, setWatch] = useState<WatchStatus>({ kind: "watching" });
  const [watchError, setWatchError] = useState<unknown>();
  const [restarts, setRestarts] = useState(0);

  const sequence = useRef(0);
  const running = useRef(0);
  // Names already shown under this filter and page: anything else PENDING is an arrival.
  const seen = useRef<Set<string> | null>(null);
  const decidedHere = useRef(new Set<string>());
  const news = useRef(onNews);
  news.current = onNews;
  const describe = useRef(describeAction);
  describe.current = describeAction;

  const load = useCallback(async () => {
    const mine = ++sequence.current;
    running.current++;
    try {
      const reply = await api.blocked.listBlockedActions({
        parent,
        states: [...states],
        pageSize: PAGE_SIZE,
        pageToken,
      });
      if (mine !== sequence.current) return;
      const known = seen.current;
      if (known) {
        const arrived = reply.blockedActions.filter(
          (a) => a.state === BlockedAction_State.PENDING && !known.has(a.name),
        );
        if (arrived.length === 1) news.current(`New held call: ${describe.current(arrived[0])}.`);
        else if (arrived.length > 1) news.current(`${arrived.length} new held calls.`);
      }
      seen.current = new Set([...(known ?? []), ...reply.blockedActions.map((a) => a.name)]);
      setItems(reply.blockedActions);
      setNextPageToken(reply.nextPageToken);
      setError(undefined);
      pausedRef.current = false;
      setPaused(false);
    } catch (e) {
      if (mine !== sequence.current) return;
      setError(e);
      // Asking again every 2 s cannot fix a refusal (PERMISSION_DENIED, a stale token...).
      pausedRef.current = isPermanent(e);
      setPaused(pausedRef.current);
    } finally {
      running.current--;
      if (mine === sequence.current) setLoaded(true);
    }
  }, [parent, states, pageToken]);

  // A new filter or page: list at once, and announce nothing of what it first shows.
  useEffect(() => {
    seen.current = null;
    setItems([]);
    setLoaded(false);
    void load();
  }, [load]);

  // Arrivals: list again every POLL_MS while visible (the watch does not carry them).
  useEffect(() => {
    const tick = () => {
      if (document.visibilityState === "visible" && running.current === 0 && !pausedRef.current) void load();
    };
    const onVisibility = () => {
      if (document.visibilityState === "visible" && !pausedRef.current) void load();
    };
    const timer = setInterval(tick, POLL_MS);
    document.addEventListener("visibilitychange", onVisibility);
    return () => {
      clearInterval(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
  }, [load]);

  const apply = useCallback(
    (action: BlockedAction) => {
      setItems((current) => {
        const index = current.findIndex((a) => a.name === action.name);
        if (index < 0) return current;
        const next = [...current];
        if (states.length === 0 || states.includes(action.state)) next[index] = action;
        else next.splice(index, 1);
        return next;
      });
    },
    [states],
  );

  // Resolutions, as they happen.
  const onResolved = useRef((_action: BlockedAction) => {});
  onResolved.current = (action: BlockedAction) => {
    const shown = seen.current?.has(action.name) ?? false;
    apply(action);
    if (shown && !decidedHere.current.has(action.name)) {
      const by = action.resolver ? ` by ${action.resolver.split("/").pop()}` : "";
      const state = (BlockedAction_State[action.state] ?? "changed").toLowerCase();
      news.current(`Held call ${describe.current(action)} is now ${state}${by}.`);
    }
    // Entries the filter now includes (e.g. under "Approved") come with a listing.
    void load();
  };

  useEffect(() => {
    const abort = new AbortController();
    void (async () => {
      let delay = RETRY_FIRST_MS;
      while (!abort.signal.aborted) {
        setWatch({ kind: "watching" });
        const settled = setTimeout(() => {
          setWatchError(undefined);
          delay = RETRY_FIRST_MS;
        }, SETTLED_MS);
        try {
          for await (const message of api.blocked.watchBlockedActionResolutions(
            { parent },
            { signal: abort.signal },
          )) {
            setWatchError(undefined);
            if (message.blockedAction) onResolved.current(message.blockedAction);
          }
          // The stream "never ends on its own": a proxy closed it. Open it again.
        } catch (e) {
          if (abort.signal.aborted) return;
          setWatchError(e);
          if (isPermanent(e)) {
            clearTimeout(settled);
            setWatch({ kind: "stopped" });
            return;
          }
        } finally {
          clearTimeout(settled);
        }
        if (abort.signal.aborted) return;
        setWatch({ kind: "retrying", seconds: Math.round(delay / 1000) });
        await sleep(delay, abort.signal);
        delay = Math.min(delay * 2, RETRY_MAX_MS);
      }
    })();
    return () => abort.abort();
  }, [parent, restarts]);

  return {
    items,
    nextPageToken,
    loaded,
    error,
    paused,
    watch,
    watchError,
    reload: load,
    apply,
    reconnect: () => setRestarts((n) => n + 1),
    decidedHere: decidedHere.current,
  };
}
