// One backend call behind a section of a view: its answer, its error and whether it is
// running, redone by `reload` (after a change) or whenever `deps` change. An answer that
// arrives after a newer call started is dropped, so a slow old page never overwrites a new one.
import { useCallback, useEffect, useRef, useState } from "react";

export interface CallState<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload(): Promise<void>;
}

export function useCall<T>(call: () => Promise<T>, deps: readonly unknown[]): CallState<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<unknown>();
  const [loading, setLoading] = useState(true);
  const latest = useRef(call);
  latest.current = call;
  const sequence = useRef(0);

  const reload = useCallback(async () => {
    const mine = ++sequence.current;
    setLoading(true);
    try {
      const answer = await latest.current();
      if (mine !== sequence.current) return;
      setData(answer);
      setError(undefined);
    } catch (e) {
      if (mine === sequence.current) setError(e);
    } finally {
      if (mine === sequence.current) setLoading(false);
    }
  }, []);

  useEffect(() => {
    void reload();
    // Unmounting or new deps make any answer still on its way stale.
    return () => {
      sequence.current++;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps -- the caller's deps are the key
  }, deps);

  return { data, error, loading, reload };
}

/** Page tokens of a paged list, so "Previous page" can go back (tokens only go forward). */
export function usePages() {
  const [tokens, setTokens] = useState<string[]>([""]);
  return {
    token: tokens[tokens.length - 1],
    page: tokens.length,
    next: (token: string) => setTokens((t) => [...t, token]),
    previous: () => setTokens((t) => (t.length > 1 ? t.slice(0, -1) : t)),
    reset: () => setTokens([""]),
  };
}
