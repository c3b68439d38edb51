// The left column's data: the caller's sessions page by page (ListSessions, most recently
// updated first) and the tenant's personas for the "New session" choice.
import { useCallback, useEffect, useRef, useState } from "react";
import type { Session } from "../../gen/skm/conversation/v1/session_pb.js";
import type { Persona } from "../../gen/skm/profiles/v1/persona_pb.js";
import { api } from "../../lib/api";
import { allPages } from "../../lib/pages";
import { retrying } from "./retry";

const PAGE = 50;

export interface SessionList {
  sessions: Session[];
  loading: boolean;
  error: unknown;
  more: boolean;
  loadMore(): void;
  refresh(): void;
  /** A session created or read here: put first (new) or replace the listed copy. */
  upsert(session: Session): void;
}

export function useSessionList(parent: string): SessionList {
  const [sessions, setSessions] = useState<Session[]>([]);
  const [token, setToken] = useState("");
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const generation = useRef(0);

  const load = useCallback(
    async (pageToken: string) => {
      const mine = ++generation.current;
      setLoading(true);
      setError(null);
      try {
        const reply = await retrying(() => api.conversation.listSessions({ parent, pageSize: PAGE, pageToken }));
        if (mine !== generation.current) return;
        setSessions((old) => {
          const base = pageToken ? old : [];
          const known = new Set(base.map((s) => s.name));
          return [...base, ...reply.sessions.filter((s) => !known.has(s.name))];
        });
        setToken(reply.nextPageToken);
      } catch (err) {
        if (mine === generation.current) setError(err);
      } finally {
        if (mine === generation.current) setLoading(false);
      }
    },
    [parent],
  );

  useEffect(() => {
    void load("");
  }, [load]);

  const upsert = useCallback((session: Session) => {
    setSessions((old) =>
      old.some((s) => s.name === session.name) ? old.map((s) => (s.name === session.name ? session : s)) : [session, ...old],
    );
  }, []);

  return {
    sessions,
    loading,
    error,
    more: token !== "",
    loadMore: () => void load(token),
    refresh: () => void load(""),
    upsert,
  };
}

export interface PersonaList {
  personas: Persona[];
  /** True once the list arrived or failed (a new session may then go ahead). */
  settled: boolean;
  error: unknown;
}

export function usePersonas(parent: string): PersonaList {
  const [state, setState] = useState<PersonaList>({ personas: [], settled: false, error: null });
  useEffect(() => {
    let live = true;
    allPages(async (pageToken) => {
      const reply = await retrying(() => api.personas.listPersonas({ parent, pageSize: 100, pageToken }));
      return { items: reply.personas, next: reply.nextPageToken };
    }).then(
      (personas) => live && setState({ personas, settled: true, error: null }),
      (error: unknown) => live && setState({ personas: [], settled: true, error }),
    );
    return () => {
      live = false;
    };
  }, [parent]);
  return state;
}
