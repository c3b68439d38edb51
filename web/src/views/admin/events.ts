// Audit events (skm.events.v1.Event) in words: the payload's name as the request's
// `event_types` filter spells it, a one-line summary of the common payloads, and the whole
// event as proto JSON for the rest.
import { toJson } from "@bufbuild/protobuf";
import { EventSchema, MemoryOperation_Kind, type Event } from "../../gen/skm/events/v1/event_pb.js";
import { BlockedAction_State } from "../../gen/skm/policy/v1/blocked_action_pb.js";
import { Execution_State } from "../../gen/skm/tools/v1/execution_pb.js";
import { Turn_State } from "../../gen/skm/conversation/v1/turn_pb.js";
import { Intervention_Kind } from "../../gen/skm/conversation/v1/session_event_pb.js";
import { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import { Verdict } from "../../gen/skm/type/v1/policy_decision_pb.js";
import { enumName, formatMoney, lastSegment, moneyAmount } from "./format";
import { registry } from "./payload";

const payloadOneof = EventSchema.oneofs.find((o) => o.name === "payload");

/** The payload names QueryAuditEvents accepts in `event_types`: "tool_completed", ... */
export const EVENT_TYPES: string[] = payloadOneof ? payloadOneof.fields.map((f) => f.name) : [];

/** The event's payload name, e.g. "policy_decided". */
export function eventType(event: Event): string {
  const field = payloadOneof?.fields.find((f) => f.localName === event.payload.case);
  return field?.name ?? "unknown";
}

export function eventSummary(event: Event): string {
  const p = event.payload;
  switch (p.case) {
    case "turnStarted":
      return `turn ${lastSegment(p.value.turn?.name ?? "")} started (${lastSegment(p.value.persona)})`;
    case "turnCompleted":
      return `turn ${lastSegment(p.value.turn?.name ?? "")} ${enumName(Turn_State, p.value.turn?.state ?? 0).toLowerCase()}`;
    case "modelCallCompleted": {
      const usage = p.value.usage;
      const cost = usage?.cost ? `, ${formatMoney(moneyAmount(usage.cost), usage.cost.currencyCode)}` : "";
      const failed = p.value.failureReason ? `, failed: ${p.value.failureReason}` : "";
      return `${usage?.model ?? "a model"}: ${usage?.inputTokens ?? 0n} in / ${usage?.outputTokens ?? 0n} out${cost}${failed}`;
    }
    case "toolRequested":
      return `asked for ${lastSegment(p.value.tool)}`;
    case "toolCompleted":
      return `${lastSegment(p.value.execution?.tool ?? "")} ${enumName(Execution_State, p.value.execution?.state ?? 0).toLowerCase()}`;
    case "policyDecided": {
      const c = p.value.check;
      const d = p.value.decision;
      return `${c?.subject ?? ""} ${c?.relation ?? ""} ${c?.object ?? ""}: ${enumName(Verdict, d?.verdict ?? 0)} (${d?.reason ?? ""})`;
    }
    case "actionBlocked":
      return `held: ${p.value.blockedAction?.summary ?? ""}`;
    case "actionResolved": {
      const a = p.value.blockedAction;
      return `${a?.summary ?? ""}: ${enumName(BlockedAction_State, p.value.previousState)} → ${enumName(BlockedAction_State, a?.state ?? 0)}`;
    }
    case "interventionApplied":
      return `${enumName(Intervention_Kind, p.value.intervention?.kind ?? 0).toLowerCase()} on turn ${lastSegment(p.value.turn)}`;
    case "memoryOperation":
      return `${enumName(MemoryOperation_Kind, p.value.kind).toLowerCase()} in ${p.value.namespace} (${p.value.memoryIds.length})`;
    case "modelBudgetExceeded":
      return `${lastSegment(p.value.budget)}: ${formatMoney(moneyAmount(p.value.spent))} of ${formatMoney(moneyAmount(p.value.limit))}`;
    case "personaBundleInstalled":
      return `${lastSegment(p.value.persona)} version ${p.value.version} (was ${p.value.previousVersion})`;
    case "personaBundleRefused":
      return `${lastSegment(p.value.persona)} version ${p.value.version}: ${p.value.reason}`;
    case "tenantOnboarded":
      return `${p.value.tenant?.name ?? ""} onboarded`;
    case "modelProfileAutoSelected":
      return p.value.summary || `${lastSegment(p.value.modelProfile)}: ${p.value.previousModel} → ${p.value.model}`;
    case "modelProfileScored":
      return `${enumName(ModelRole, p.value.role).toLowerCase()}: ${p.value.scores.length} model(s) scored${p.value.recommendedModel ? `, recommends ${p.value.recommendedModel}` : ""}${p.value.applied ? " (applied)" : ""}`;
    case "kamachiqProgress":
      return `${p.value.task}: ${p.value.message}`;
    default:
      return "";
  }
}

/** The whole event as indented proto JSON; a sentence when a nested Any cannot be decoded. */
export function eventJson(event: Event): string {
  try {
    return JSON.stringify(toJson(EventSchema, event, { registry }), null, 2);
  } catch (e) {
    return `(this event cannot be shown as JSON: ${e instanceof Error ? e.message : String(e)})`;
  }
}
