// Small pure helpers the session workspace shares: resource names, enum labels, durations,
// money and timestamps as the transcript shows them.
import { timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Session_State } from "../../gen/skm/conversation/v1/session_pb.js";
import { Turn_State } from "../../gen/skm/conversation/v1/turn_pb.js";
import type { Money } from "../../gen/skm/type/v1/money_pb.js";

/** The last segment of a resource name: "tenants/t/sessions/abc" -> "abc". */
export function lastSegment(name: string): string {
  return name.slice(name.lastIndexOf("/") + 1);
}

/** A turn's ordinal from its name ("…/turns/7" -> 7); turns sort by it. */
export function turnOrdinal(name: string): number {
  const n = Number.parseInt(lastSegment(name), 10);
  return Number.isFinite(n) ? n : 0;
}

/** "tenants/t/personas/coder" for "coder" or the full name, as the API wants it. */
export function personaName(parent: string, persona: string): string {
  return persona.startsWith("tenants/") ? persona : `${parent}/personas/${persona}`;
}

/** An enum value's name as the proto spells it without prefix, e.g. "AWAITING_APPROVAL". */
export function turnStateName(state: Turn_State): string {
  return Turn_State[state] ?? "UNSPECIFIED";
}

export function sessionStateName(state: Session_State): string {
  return Session_State[state] ?? "UNSPECIFIED";
}

/** "AWAITING_APPROVAL" -> "awaiting approval", for people. */
export function words(constant: string): string {
  return constant.toLowerCase().replace(/_/g, " ");
}

export function isTurnActive(state: Turn_State): boolean {
  return state === Turn_State.RUNNING || state === Turn_State.AWAITING_APPROVAL;
}

/** Badge colour of a state: running/held/failed at a glance. */
export function stateBadgeClass(constant: string): string {
  if (constant === "COMPLETED" || constant === "IDLE") return "badge badge-allow";
  if (constant === "FAILED" || constant === "REFUSED") return "badge badge-deny";
  if (constant === "AWAITING_APPROVAL" || constant === "INTERRUPTED") return "badge badge-held";
  return "badge badge-info";
}

export function seconds(duration: Duration | undefined): string {
  if (!duration) return "";
  const s = Number(duration.seconds) + duration.nanos / 1e9;
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

export function money(value: Money | undefined): string {
  if (!value || (value.units === 0n && value.nanos === 0)) return "";
  const amount = Number(value.units) + value.nanos / 1e9;
  return `${amount.toFixed(amount < 0.01 ? 6 : 4)} ${value.currencyCode}`;
}

export function when(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toLocaleString() : "";
}

export function clock(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toLocaleTimeString() : "";
}

/** JSON text pretty-printed when it parses, else as given (the server's text is the truth). */
export function prettyJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** JSON text as a plain object, or null when it is not one. */
export function jsonObject(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
