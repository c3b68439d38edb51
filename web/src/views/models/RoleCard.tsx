// One role's card: which models serve it in the chosen mode (the tenant's profile, or what
// the deployment default resolves to), its fallback chain and sampling settings, its usage, the scoring
// job's word on it, the override controls and the profile's revisions.
import type { ReactNode } from "react";
import type { Model } from "../../gen/skm/profiles/v1/model_pb.js";
import type { ModelProfile } from "../../gen/skm/profiles/v1/model_profile_pb.js";
import type { ModelRecommendation } from "../../gen/skm/profiles/v1/model_score_pb.js";
import type { DeploymentMode } from "../../gen/skm/type/v1/deployment_mode_pb.js";
import type { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { useLoad } from "./data";
import { OverrideForm } from "./OverrideForm";
import { Revisions } from "./Revisions";
import { RoleUsage } from "./RoleUsage";
import { formatMoney, formatTime, modeTitle, modelTitle } from "./format";

interface Props {
  parent: string;
  role: ModelRole;
  title: string;
  about: string;
  mode: DeploymentMode;
  profile: ModelProfile | undefined;
  models: Model[] | undefined;
  recommendation: ModelRecommendation | undefined;
  refresh: number;
  onChanged(message: string): void;
}

function ModelName({ name, models }: { name: string; models: Model[] | undefined }) {
  const title = modelTitle(name, models);
  return (
    <>
      {title} {title !== name && <code className="muted small">{name}</code>}
    </>
  );
}

/** Tier 0, the fallback chain and the sampling settings: the rows a profile and a
 * resolution share. */
function TierFacts(props: {
  first: ReactNode;
  fallbacks: { key: string; node: ReactNode }[];
  temperature: number | undefined;
  maxOutputTokens: number;
}) {
  return (
    <>
      <div>
        <dt>Model (tier 0)</dt>
        <dd>{props.first || "none"}</dd>
      </div>
      <div>
        <dt>Fallback chain</dt>
        <dd>
          {props.fallbacks.length === 0 ? (
            "no fallback"
          ) : (
            <ol className="models-tiers" start={1}>
              {props.fallbacks.map((f) => (
                <li key={f.key}>{f.node}</li>
              ))}
            </ol>
          )}
        </dd>
      </div>
      <div>
        <dt>Temperature</dt>
        <dd>{props.temperature === undefined ? "engine default" : props.temperature}</dd>
      </div>
      <div>
        <dt>Max output tokens</dt>
        <dd>{props.maxOutputTokens === 0 ? "engine default" : props.maxOutputTokens.toLocaleString()}</dd>
      </div>
    </>
  );
}

function ProfileFacts({ profile, models }: { profile: ModelProfile; models: Model[] | undefined }) {
  const [first, ...fallbacks] = profile.modelTiers;
  const bounds = profile.autoSelectBounds;
  return (
    <dl className="kv models-facts">
      <div>
        <dt>Source</dt>
        <dd>
          Tenant profile, revision {profile.revision?.revisionId ?? "?"}{" "}
          <span className="muted small">(changed {formatTime(profile.updateTime)})</span>
        </dd>
      </div>
      <TierFacts
        first={first && <ModelName name={first} models={models} />}
        fallbacks={fallbacks.map((t) => ({ key: t, node: <ModelName name={t} models={models} /> }))}
        temperature={profile.temperature}
        maxOutputTokens={profile.maxOutputTokens}
      />
      <div>
        <dt>Auto mode</dt>
        <dd>
          {profile.autoSelect ? "on" : "off"}
          {bounds && (bounds.maxCostPerMillionTokens || bounds.minQuality > 0) && (
            <span className="muted small">
              {" "}
              (bounds:
              {bounds.maxCostPerMillionTokens && ` cost at most ${formatMoney(bounds.maxCostPerMillionTokens)} per M tokens`}
              {bounds.minQuality > 0 && ` quality at least ${bounds.minQuality}`})
            </span>
          )}
        </dd>
      </div>
    </dl>
  );
}

/** Without a tenant profile the role runs on the deployment default: what it resolves to
 * (ResolveModelProfile, with no persona and no session overrides) is shown as it is. */
function DefaultFacts({ parent, role, mode, refresh }: { parent: string; role: ModelRole; mode: DeploymentMode; refresh: number }) {
  const resolved = useLoad(
    (signal) => api.modelProfiles.resolveModelProfile({ parent, role, mode }, { signal }),
    [parent, role, mode, refresh],
  );
  const profile = resolved.data?.resolvedModelProfile;
  const [first, ...fallbacks] = profile?.modelTiers ?? [];
  return (
    <>
      <dl className="kv models-facts">
        <div>
          <dt>Source</dt>
          <dd>Deployment default (the tenant has no profile for this role in this mode)</dd>
        </div>
        {profile && (
          <TierFacts
            first={first && <ResolvedName model={first} />}
            fallbacks={fallbacks.map((m) => ({ key: m.name, node: <ResolvedName model={m} /> }))}
            temperature={profile.temperature}
            maxOutputTokens={profile.maxOutputTokens}
          />
        )}
      </dl>
      {resolved.loading && !profile && <p className="muted small">Resolving…</p>}
      <ErrorBanner error={resolved.error} />
    </>
  );
}

function ResolvedName({ model }: { model: Model }) {
  return (
    <>
      {model.displayName || model.name} {model.displayName && <code className="muted small">{model.name}</code>}
    </>
  );
}

export function RoleCard(props: Props) {
  const { parent, role, title, about, mode, profile, models, recommendation, refresh, onChanged } = props;
  const headingId = `models-role-${role}`;
  return (
    <section className="card models-role stack" aria-labelledby={headingId}>
      <div className="row">
        <h2 id={headingId}>{title}</h2>
        <span className="badge badge-info">{modeTitle(mode)}</span>
        {profile?.autoSelect && <span className="badge badge-allow">auto mode</span>}
      </div>
      <p className="muted small">{about}</p>
      {profile ? <ProfileFacts profile={profile} models={models} /> : <DefaultFacts parent={parent} role={role} mode={mode} refresh={refresh} />}
      {recommendation && (
        <p className="small">
          <strong>Scoring job:</strong> {recommendation.summary}
          {!recommendation.applied && recommendation.notAppliedReason && (
            <span className="muted"> (not applied: {recommendation.notAppliedReason})</span>
          )}
        </p>
      )}
      <RoleUsage parent={parent} role={role} refresh={refresh} />
      <OverrideForm key={mode} parent={parent} role={role} mode={mode} profile={profile} models={models} onSaved={onChanged} />
      {profile && <Revisions profile={profile} models={models} onRolledBack={onChanged} />}
    </section>
  );
}
