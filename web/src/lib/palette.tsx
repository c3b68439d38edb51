// The quick-action palette's registry. The shell registers the actions that work from
// anywhere; a view registers its own while it is shown (usePaletteActions), so the palette
// always lists what can be done right now.
import { createContext, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";

export interface PaletteAction {
  id: string;
  /** What the list shows and the search matches, e.g. "Approve the oldest held call". */
  title: string;
  /** A group label: "View", "Session", "Approvals", ... */
  group: string;
  /** Extra words the search matches. */
  keywords?: string;
  run(): void | Promise<void>;
}

interface Registry {
  actions: PaletteAction[];
  register(owner: string, actions: PaletteAction[]): void;
  unregister(owner: string): void;
}

const PaletteContext = createContext<Registry | null>(null);

export function PaletteProvider({ children }: { children: ReactNode }) {
  const [byOwner, setByOwner] = useState<Record<string, PaletteAction[]>>({});
  const registry = useMemo<Registry>(
    () => ({
      actions: Object.values(byOwner).flat(),
      register: (owner, actions) => setByOwner((current) => ({ ...current, [owner]: actions })),
      unregister: (owner) =>
        setByOwner((current) => {
          const next = { ...current };
          delete next[owner];
          return next;
        }),
    }),
    [byOwner],
  );
  return <PaletteContext.Provider value={registry}>{children}</PaletteContext.Provider>;
}

export function usePalette(): Registry {
  const registry = useContext(PaletteContext);
  if (!registry) throw new Error("usePalette outside PaletteProvider");
  return registry;
}

/** Offer these actions while the calling component is mounted. `owner` must be unique. */
export function usePaletteActions(owner: string, actions: PaletteAction[]): void {
  const { register, unregister } = usePalette();
  const latest = useRef(actions);
  latest.current = actions;
  const signature = actions.map((a) => `${a.id}\u0000${a.title}`).join("\u0001");
  useEffect(() => {
    register(
      owner,
      latest.current.map((action) => ({ ...action, run: () => latest.current.find((a) => a.id === action.id)?.run() })),
    );
  }, [owner, signature, register]);
  useEffect(() => () => unregister(owner), [owner, unregister]);
}
