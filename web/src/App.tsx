// The shell: sign-in, the navigation, the current view, and the actions that work from
// anywhere (Ctrl/Cmd-K).
import { lazy, Suspense, useEffect, useMemo, useState } from "react";
import { BlockedAction_State } from "./gen/skm/policy/v1/blocked_action_pb.js";
import { Palette } from "./components/Palette";
import { SignIn } from "./components/SignIn";
import { api } from "./lib/api";
import { tenantName, useAuth } from "./lib/auth";
import { navigate, useRoute } from "./lib/router";
import { usePaletteActions, type PaletteAction } from "./lib/palette";

const Sessions = lazy(() => import("./views/Sessions"));
const Approvals = lazy(() => import("./views/Approvals"));
const Admin = lazy(() => import("./views/Admin"));
const Models = lazy(() => import("./views/Models"));
const Audio = lazy(() => import("./views/Audio"));
const Dashboards = lazy(() => import("./views/Dashboards"));

const VIEWS = [
  { path: "sessions", title: "Sessions", component: Sessions },
  { path: "approvals", title: "Approvals", component: Approvals },
  { path: "audio", title: "Voice", component: Audio },
  { path: "models", title: "Models", component: Models },
  { path: "dashboards", title: "Dashboards", component: Dashboards },
  { path: "admin", title: "Tenant admin", component: Admin },
] as const;

function useGlobalActions(): void {
  const { claims, signOut } = useAuth();
  const [personas, setPersonas] = useState<{ name: string; title: string }[]>([]);

  useEffect(() => {
    if (!claims) return;
    let live = true;
    api.personas
      .listPersonas({ parent: tenantName(claims), pageSize: 100 })
      .then((reply) => {
        if (live) setPersonas(reply.personas.map((p) => ({ name: p.name, title: p.displayName || p.name })));
      })
      .catch(() => live && setPersonas([]));
    return () => {
      live = false;
    };
  }, [claims]);

  const actions = useMemo<PaletteAction[]>(() => {
    if (!claims) return [];
    const list: PaletteAction[] = VIEWS.map((view) => ({
      id: `open-${view.path}`,
      title: `Open ${view.title}`,
      group: "View",
      keywords: "go view navigate",
      run: () => navigate(`/${view.path}`),
    }));
    list.push({
      id: "new-session",
      title: "New session",
      group: "Session",
      keywords: "create start chat",
      run: () => navigate("/sessions/new"),
    });
    for (const persona of personas) {
      list.push({
        id: `persona-${persona.name}`,
        title: `Switch persona: new session as ${persona.title}`,
        group: "Session",
        keywords: `persona ${persona.name}`,
        run: () => navigate(`/sessions/new?persona=${encodeURIComponent(persona.name)}`),
      });
    }
    list.push({
      id: "approve-oldest",
      title: "Approve the oldest held call",
      group: "Approvals",
      keywords: "blocked held approve oldest",
      run: async () => {
        const reply = await api.blocked.listBlockedActions({
          parent: tenantName(claims),
          states: [BlockedAction_State.PENDING],
          pageSize: 100,
        });
        const oldest = [...reply.blockedActions].sort(
          (a, b) => Number(a.createTime?.seconds ?? 0n) - Number(b.createTime?.seconds ?? 0n),
        )[0];
        if (!oldest) throw new Error("no call is held");
        await api.blocked.approveBlockedAction({ name: oldest.name, etag: oldest.etag, note: "approved from the palette" });
      },
    });
    list.push({ id: "sign-out", title: "Sign out", group: "Account", run: signOut });
    return list;
  }, [claims, personas, signOut]);

  usePaletteActions("shell", actions);
}

export function App() {
  const { claims, signOut } = useAuth();
  const route = useRoute();
  useGlobalActions();

  if (!claims) return <SignIn />;

  const current = VIEWS.find((view) => view.path === route.parts[0]) ?? VIEWS[0];
  const View = current.component;

  return (
    <div className="shell">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <span className="brand">SomaKamachiq</span>
        <nav aria-label="Views">
          {VIEWS.map((view) => (
            <a
              key={view.path}
              href={`#/${view.path}`}
              aria-current={view === current ? "page" : undefined}
              className={view === current ? "active" : ""}
            >
              {view.title}
            </a>
          ))}
        </nav>
        <span className="spacer" />
        <button
          type="button"
          className="btn btn-small"
          onClick={() => window.dispatchEvent(new Event("skm:open-palette"))}
          aria-keyshortcuts="Control+K Meta+K"
        >
          Actions <kbd>Ctrl K</kbd>
        </button>
        <span className="whoami" title={claims.roles.join(", ")}>
          {claims.sub} @ {claims.tenant}
        </span>
        <button type="button" className="btn btn-small" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        <Suspense fallback={<p className="muted">Loading {current.title}…</p>}>
          <View route={route} />
        </Suspense>
      </main>
      <Palette />
    </div>
  );
}
