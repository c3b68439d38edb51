// The model control panel (#/models): per role, the models serving the tenant in one
// deployment mode, their usage, overrides and auto mode, revisions and rollback, and the
// scoring job's recommendations and scores. ?mode=developer|test|production picks the mode.
import { useCallback, useMemo, useState } from "react";
import { DeploymentMode } from "../gen/skm/type/v1/deployment_mode_pb.js";
import { ErrorBanner } from "../components/ErrorBanner";
import { tenantName, useClaims } from "../lib/auth";
import { usePaletteActions, type PaletteAction } from "../lib/palette";
import { navigate } from "../lib/router";
import { listModels, listProfiles, listRecommendations, listScores, useLoad } from "./models/data";
import { MODES, ROLES } from "./models/format";
import { Recommendations, Scores } from "./models/Recommendations";
import { RoleCard } from "./models/RoleCard";
import type { ViewProps } from "./types";
import "./models/models.css";

function modeFromQuery(value: string | null): DeploymentMode {
  const found = MODES.find((m) => m.title.toLowerCase() === (value ?? "").toLowerCase());
  return found?.mode ?? DeploymentMode.DEVELOPER;
}

export default function Models({ route }: ViewProps) {
  const parent = tenantName(useClaims());
  const mode = modeFromQuery(route.query.get("mode"));
  const [refresh, setRefresh] = useState(0);
  const [notice, setNotice] = useState("");

  const models = useLoad((signal) => listModels(signal), [refresh]);
  const profiles = useLoad((signal) => listProfiles(parent, signal), [parent, refresh]);
  const recs = useLoad((signal) => listRecommendations(parent, signal), [parent, refresh]);
  const scores = useLoad((signal) => listScores(parent, signal), [parent, refresh]);

  const reloadAll = useCallback(() => setRefresh((n) => n + 1), []);
  const changed = useCallback(
    (message: string) => {
      setNotice(message);
      reloadAll();
    },
    [reloadAll],
  );
  const setMode = (next: DeploymentMode) => {
    const title = MODES.find((m) => m.mode === next)?.title.toLowerCase() ?? "developer";
    navigate(`/models?mode=${title}`);
  };

  const actions = useMemo<PaletteAction[]>(
    () => [
      { id: "models-refresh", title: "Refresh models", group: "Models", keywords: "reload profiles", run: reloadAll },
      ...MODES.map((m) => ({
        id: `models-mode-${m.mode}`,
        title: `Show model profiles for ${m.title} mode`,
        group: "Models",
        keywords: "mode profile",
        run: () => navigate(`/models?mode=${m.title.toLowerCase()}`),
      })),
    ],
    [reloadAll],
  );
  usePaletteActions("models", actions);

  const inMode = (profiles.data ?? []).filter((p) => p.mode === mode);

  return (
    <div className="models-view stack">
      <h1>Models</h1>
      <div className="toolbar">
        <label htmlFor="models-mode">Mode</label>
        <select id="models-mode" value={mode} onChange={(e) => setMode(Number(e.target.value) as DeploymentMode)}>
          {MODES.map((m) => (
            <option key={m.mode} value={m.mode}>
              {m.title}
            </option>
          ))}
        </select>
        <button type="button" className="btn" onClick={reloadAll}>
          Refresh
        </button>
        <span className="muted small" role="status" aria-live="polite">
          {notice}
        </span>
      </div>
      <ErrorBanner error={models.error} />
      <ErrorBanner error={profiles.error} />
      {profiles.loading && !profiles.data && (
        <p className="muted" role="status">
          Loading model profiles…
        </p>
      )}
      {profiles.data && (
        <div className="models-roles">
          {ROLES.map(({ role, title, about }) => {
            const profile = inMode.find((p) => p.role === role);
            // The recommendation about what serves this role here: the profile's, or the default's.
            const recommendation = recs.data?.find(
              (r) => r.role === role && r.modelProfile === (profile ? profile.name : ""),
            );
            return (
              <RoleCard
                key={role}
                parent={parent}
                role={role}
                title={title}
                about={about}
                mode={mode}
                profile={profile}
                models={models.data}
                recommendation={recommendation}
                refresh={refresh}
                onChanged={changed}
              />
            );
          })}
        </div>
      )}
      <Recommendations recs={recs} models={models.data} />
      <Scores scores={scores} models={models.data} />
    </div>
  );
}
