// How the model control panel words the contract's values: role and mode titles, money,
// durations, ratios and times. Formatting only; nothing here computes platform data.
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { durationMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Model } from "../../gen/skm/profiles/v1/model_pb.js";
import { Revision_Origin } from "../../gen/skm/profiles/v1/revision_pb.js";
import { DeploymentMode } from "../../gen/skm/type/v1/deployment_mode_pb.js";
import { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import type { Money } from "../../gen/skm/type/v1/money_pb.js";

/** The roles a tenant configures, in the order the contract lists them. */
export const ROLES: { role: ModelRole; title: string; about: string }[] = [
  { role: ModelRole.PRE_SLM, title: "Pre-SLM", about: "Small model run before the primary one: intent, slots, quick heuristics." },
  { role: ModelRole.PRIMARY, title: "Primary", about: "The agent's main model: replies and tool calls." },
  { role: ModelRole.UTILITY, title: "Utility", about: "Housekeeping, e.g. history compression." },
  { role: ModelRole.EMBEDDING, title: "Embedding", about: "Text embeddings for memory and knowledge recall." },
];

export const MODES: { mode: DeploymentMode; title: string }[] = [
  { mode: DeploymentMode.DEVELOPER, title: "Developer" },
  { mode: DeploymentMode.TEST, title: "Test" },
  { mode: DeploymentMode.PRODUCTION, title: "Production" },
];

export function roleTitle(role: ModelRole): string {
  return ROLES.find((r) => r.role === role)?.title ?? ModelRole[role] ?? String(role);
}

export function modeTitle(mode: DeploymentMode): string {
  return MODES.find((m) => m.mode === mode)?.title ?? DeploymentMode[mode] ?? String(mode);
}

const ORIGINS: Record<Revision_Origin, string> = {
  [Revision_Origin.UNSPECIFIED]: "unspecified",
  [Revision_Origin.CREATE]: "created",
  [Revision_Origin.UPDATE]: "updated",
  [Revision_Origin.ROLLBACK]: "rollback",
  [Revision_Origin.AUTO_SELECT]: "auto mode",
  [Revision_Origin.BUNDLE_INSTALL]: "bundle install",
  [Revision_Origin.TRAINING]: "training",
};

export function originTitle(origin: Revision_Origin): string {
  return ORIGINS[origin] ?? String(origin);
}

/** units + nanos / 1e9, as the Money comment defines it. */
export function moneyAmount(money: Money | undefined): number {
  if (!money) return 0;
  return Number(money.units) + money.nanos / 1e9;
}

/** "0.0123 USD"; small amounts keep enough digits to not read as zero. */
export function formatAmount(amount: number, currency: string): string {
  const digits = amount !== 0 && Math.abs(amount) < 0.01 ? 6 : 2;
  const text = amount.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: digits });
  return currency ? `${text} ${currency}` : text;
}

export function formatMoney(money: Money | undefined): string {
  if (!money) return "not set";
  return formatAmount(moneyAmount(money), money.currencyCode);
}

export function formatSeconds(seconds: number): string {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  return `${seconds.toLocaleString(undefined, { maximumFractionDigits: 2 })} s`;
}

export function formatDuration(duration: Duration | undefined): string {
  return duration ? formatSeconds(durationMs(duration) / 1000) : "unknown";
}

export function formatRatio(ratio: number): string {
  return `${(ratio * 100).toLocaleString(undefined, { maximumFractionDigits: 1 })} %`;
}

/** A signed relative change, "+12 %" / "-30 %". */
export function formatChange(change: number): string {
  const text = formatRatio(change);
  return change > 0 ? `+${text}` : text;
}

export function formatTime(timestamp: Timestamp | undefined): string {
  return timestamp ? timestampDate(timestamp).toLocaleString() : "unknown";
}

/** "models/x" -> its display name when the registry has it, else the id. */
export function modelTitle(name: string, models: Model[] | undefined): string {
  const found = models?.find((m) => m.name === name);
  return found?.displayName || name.replace(/^models\//, "");
}
