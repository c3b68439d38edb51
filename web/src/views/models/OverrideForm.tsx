// Choosing a role's model for one mode. The contract has no separate "override" object for
// a tenant: the tenant's ModelProfile for (role, mode) IS its override of the deployment
// default. So "Save override" updates that profile (the chosen model at tier 0, the other
// tiers kept after it as fallbacks), or creates it when the role still uses the default;
// "Use auto mode" sets the profile's auto_select, letting the scoring job pick tier 0.
import { useState, type FormEvent } from "react";
import { ModelCapability, type Model } from "../../gen/skm/profiles/v1/model_pb.js";
import type { ModelProfile } from "../../gen/skm/profiles/v1/model_profile_pb.js";
import type { DeploymentMode } from "../../gen/skm/type/v1/deployment_mode_pb.js";
import { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api, newRequestId } from "../../lib/api";
import { modelTitle, roleTitle } from "./format";

/** At most 8 tiers (the contract's limit); the server applies the same rule to auto mode. */
const MAX_TIERS = 8;

function tiersWithFirst(tiers: string[], model: string): string[] {
  return [model, ...tiers.filter((t) => t !== model)].slice(0, MAX_TIERS);
}

/** Models able to do the role's job: svc_profiles refuses a tier without the capability. */
function candidates(models: Model[], role: ModelRole): Model[] {
  const needed = role === ModelRole.EMBEDDING ? ModelCapability.EMBEDDINGS : ModelCapability.CHAT;
  return models.filter((m) => m.capabilities.includes(needed));
}

interface Props {
  parent: string;
  role: ModelRole;
  mode: DeploymentMode;
  profile: ModelProfile | undefined;
  models: Model[] | undefined;
  /** Called with what was done, after the platform accepted it. */
  onSaved(message: string): void;
}

export function OverrideForm({ parent, role, mode, profile, models, onSaved }: Props) {
  const [choice, setChoice] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const title = roleTitle(role);
  const id = `models-override-${role}`;
  const options = candidates(models ?? [], role);

  const run = async (action: () => Promise<string>) => {
    setBusy(true);
    setError(null);
    try {
      onSaved(await action());
      setChoice("");
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const create = async (autoSelect: boolean) => {
    await api.modelProfiles.createModelProfile({
      parent,
      requestId: newRequestId(),
      modelProfile: { role, mode, modelTiers: [choice], autoSelect },
    });
  };

  const saveOverride = (event: FormEvent) => {
    event.preventDefault();
    if (!choice) return;
    void run(async () => {
      if (!profile) {
        await create(false);
      } else {
        // Auto mode off too: otherwise the next scoring run could replace the chosen model.
        await api.modelProfiles.updateModelProfile({
          modelProfile: { ...profile, modelTiers: tiersWithFirst(profile.modelTiers, choice), autoSelect: false },
          updateMask: { paths: ["model_tiers", "auto_select"] },
        });
      }
      return `${title}: ${modelTitle(choice, models)} saved at tier 0.`;
    });
  };

  const setAuto = (on: boolean) =>
    void run(async () => {
      if (!profile) {
        await create(true);
      } else {
        await api.modelProfiles.updateModelProfile({
          modelProfile: { ...profile, autoSelect: on },
          updateMask: { paths: ["auto_select"] },
        });
      }
      return on ? `${title}: auto mode is on.` : `${title}: auto mode is off.`;
    });

  const autoOn = profile?.autoSelect ?? false;
  // Without a profile, auto mode needs a starting tier 0: creating a profile requires tiers.
  const autoBlocked = !profile && !choice;

  return (
    <form className="models-override stack" onSubmit={saveOverride} aria-label={`Override for ${title}`}>
      <h3>Override</h3>
      <div className="row">
        <label htmlFor={id}>Model</label>
        <select id={id} value={choice} onChange={(e) => setChoice(e.target.value)} disabled={busy || !models}>
          <option value="">{models ? "Choose a model…" : "Loading models…"}</option>
          {options.map((m) => (
            <option key={m.name} value={m.name}>
              {m.displayName || m.name}
            </option>
          ))}
        </select>
      </div>
      <div className="row">
        <button type="submit" className="btn btn-primary" disabled={busy || !choice}>
          Save override
        </button>
        <button
          type="button"
          className="btn"
          disabled={busy || autoOn || autoBlocked}
          aria-describedby={`${id}-auto-hint`}
          onClick={() => setAuto(true)}
        >
          Use auto mode
        </button>
        {autoOn && (
          <button type="button" className="btn" disabled={busy} onClick={() => setAuto(false)}>
            Turn off auto mode
          </button>
        )}
      </div>
      <p id={`${id}-auto-hint`} className="muted small">
        {autoOn && "Auto mode is on. "}
        {profile
          ? "Saving an override puts the model at tier 0, keeps the other tiers as fallbacks and turns auto mode off. In auto mode the scoring job moves its recommended model to tier 0 itself."
          : "This role uses the deployment default in this mode. Saving an override creates the tenant's profile with the chosen model; to start in auto mode, choose a starting model first."}
        {role === ModelRole.EMBEDDING && " Changing the embedding model means re-embedding: vectors of different models are not compared."}
      </p>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
    </form>
  );
}
