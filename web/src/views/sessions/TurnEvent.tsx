// The smaller entries of a turn's timeline: state changes, the pre-processing verdict, model
// calls (which model answered, tokens, timings, and the raw output it streamed), user
// interventions and turn errors. Each carries its event's data-sequence.
import { Intervention_Kind } from "../../gen/skm/conversation/v1/session_event_pb.js";
import { SafetyFlag } from "../../gen/skm/conversation/v1/turn_pb.js";
import { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import type { Delta, Item } from "./transcript";
import { clock, lastSegment, money, seconds, stateBadgeClass, turnStateName, words } from "./format";

/** Raw model output, one span per streamed delta. */
export function RawOutput({ deltas, label }: { deltas: Delta[]; label: string }) {
  return (
    <details className="sess-raw">
      <summary className="small muted">{label}</summary>
      <pre>
        {deltas.map((delta) => (
          <span key={String(delta.seq)} data-sequence={String(delta.seq)}>
            {delta.text}
          </span>
        ))}
      </pre>
    </details>
  );
}

// The platform's tiny test models are named so (skm_stack.tinyllm: "...-untrained"); their
// output is random and must never pass for an answer.
const UNTRAINED = /untrained/i;

function ModelCallEntry({ item }: { item: Extract<Item, { kind: "model" }> }) {
  const usage = item.call.usage;
  const facts = [
    usage ? `${words(ModelRole[usage.role] ?? "UNSPECIFIED")}, tier ${usage.tier}` : "",
    usage ? `${usage.inputTokens}${usage.inputTokensEstimated ? "~" : ""} in / ${usage.outputTokens} out tokens` : "",
    usage?.timeToFirstToken ? `first token ${seconds(usage.timeToFirstToken)}` : "",
    usage?.duration ? `took ${seconds(usage.duration)}` : "",
    usage && usage.tokensPerSecond > 0 ? `${usage.tokensPerSecond.toFixed(1)} tok/s` : "",
    money(usage?.cost),
  ].filter(Boolean);
  return (
    <div className="sess-event sess-model" data-sequence={String(item.seq)}>
      <span className="badge badge-info">model</span>{" "}
      <span className="mono">{usage ? lastSegment(usage.model) : "unknown model"}</span>
      {usage && UNTRAINED.test(usage.model) && (
        <span className="badge badge-held" title="The stack's test fixtures have random weights">
          UNTRAINED: its text means nothing
        </span>
      )}
      {item.call.iteration > 0 && <span className="muted small"> iteration {item.call.iteration}</span>}
      <span className="muted small"> · {facts.join(" · ")}</span>
      {item.call.failureReason && (
        <span className="small">
          {" "}
          <span className="badge badge-deny">failed</span> <span className="mono">{item.call.failureReason}</span>
          {item.discarded > 0 && <span className="muted"> (its output was discarded; the next tier follows)</span>}
        </span>
      )}
      {item.call.interrupted && (
        <span className="small">
          {" "}
          <span className="badge badge-held">cut off</span>
        </span>
      )}
      {item.output.length > 0 && <RawOutput deltas={item.output} label={`model output (${item.output.length} pieces)`} />}
    </div>
  );
}

export function TurnEvent({ item }: { item: Item }) {
  if (item.kind === "model") return <ModelCallEntry item={item} />;
  if (item.kind !== "event") return null;
  const seq = String(item.seq);
  const at = clock(item.event.createTime);
  const e = item.event.event;
  switch (e.case) {
    case "turnStateChanged": {
      const state = turnStateName(e.value.state);
      return (
        <div className="sess-event small" data-sequence={seq}>
          <span className="muted">{at} turn </span>
          <span className={stateBadgeClass(state)}>{words(state)}</span>
          {e.value.reason && <span className="mono"> {e.value.reason}</span>}
        </div>
      );
    }
    case "preprocessing": {
      const v = e.value;
      const slots = Object.entries(v.slots);
      return (
        <div className="sess-event small" data-sequence={seq}>
          <span className="badge badge-info">pre-processing</span>{" "}
          {v.intent ? (
            <>
              intent <span className="mono">{v.intent}</span>{" "}
              <span className="muted">({Math.round(v.intentConfidence * 100)}%)</span>
            </>
          ) : (
            <span className="muted">no intent recognised</span>
          )}
          {slots.length > 0 && (
            <span>
              {" "}
              · slots{" "}
              {slots.map(([k, val]) => (
                <span key={k} className="mono">
                  {k}={val}{" "}
                </span>
              ))}
            </span>
          )}
          {v.safetyFlags.map((flag) => (
            <span key={flag} className="badge badge-held">
              {words(SafetyFlag[flag] ?? "UNSPECIFIED")}
            </span>
          ))}
          {v.refused && (
            <span>
              {" "}
              <span className="badge badge-deny">refused</span> <span className="mono">{v.refusalReason}</span>
            </span>
          )}
        </div>
      );
    }
    case "intervention": {
      const v = e.value;
      return (
        <div className="sess-event sess-intervention small" data-sequence={seq}>
          <span className="muted">{at} </span>
          <span className="badge badge-held">{words(Intervention_Kind[v.kind] ?? "UNSPECIFIED")}</span>
          {v.text && (
            <span>
              {" "}
              with guidance <q>{v.text}</q>
            </span>
          )}
          {v.rerunTurn && <span> as turn {lastSegment(v.rerunTurn)}</span>}
        </div>
      );
    }
    case "error":
      return (
        <div className="sess-event sess-turn-error" data-sequence={seq}>
          <strong>{e.value.reason || "ERROR"}</strong>
          {e.value.message && <span>: {e.value.message}</span>}
        </div>
      );
    default:
      return null;
  }
}
