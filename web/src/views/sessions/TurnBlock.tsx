// One turn of the transcript: the user's message, what the agent did (model calls, tool
// calls, interventions, state changes, errors) in sequence order, and the agent's text,
// growing as tokens stream until the final response replaces it.
import type { Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { partialAnswer } from "./answer";
import { lastSegment, stateBadgeClass, turnStateName, when, words } from "./format";
import { ToolCall } from "./ToolCall";
import { TurnControls } from "./TurnControls";
import { RawOutput, TurnEvent } from "./TurnEvent";
import type { TurnView } from "./transcript";

function AgentText({ turn }: { turn: TurnView }) {
  const deltas = turn.attempt?.deltas ?? [];
  const raw = deltas.map((delta) => delta.text).join("");
  let body;
  if (turn.final) body = turn.final.value.text;
  else if (raw) {
    // While a `response` call is written, its answer reads better than the JSON around it.
    const answer = partialAnswer(raw);
    body = answer !== null ? answer || "…" : <span className="agent-raw">{raw}</span>;
  } else body = turn.meta?.responseText ?? "";
  return (
    <div className="sess-agent">
      <div
        className="agent-text"
        aria-live="polite"
        data-sequence={turn.final ? String(turn.final.seq) : undefined}
      >
        {body}
      </div>
      {deltas.length > 0 && <RawOutput deltas={deltas} label="model output, streaming" />}
    </div>
  );
}

export function TurnBlock({
  turn,
  current,
  firstTokenMs,
  onTurn,
}: {
  turn: TurnView;
  current: boolean;
  firstTokenMs: number | undefined;
  onTurn: (turn: Turn | undefined) => void;
}) {
  const state = turnStateName(turn.state);
  const text = turn.user?.value.text ?? turn.meta?.inputText ?? "";
  const headingId = `turn-heading-${turn.ordinal}`;
  return (
    <article className={`sess-turn${current ? " sess-turn-current" : ""}`} data-turn-state={state} aria-labelledby={headingId}>
      <header className="row">
        <h3 id={headingId} className="sess-turn-title">
          Turn {turn.ordinal}
        </h3>
        <span className={stateBadgeClass(state)}>{words(state)}</span>
        {turn.meta?.rerunOf && (
          <span className="small muted">
            rerun of turn {lastSegment(turn.meta.rerunOf)}, from tier {turn.meta.startTier}
          </span>
        )}
        <span className="small muted">{when(turn.meta?.createTime ?? turn.user?.event.createTime)}</span>
      </header>
      <div className="sess-user" data-sequence={turn.user ? String(turn.user.seq) : undefined}>
        <span className="sess-who">You</span>
        <p>{text}</p>
        {turn.user?.value.toolChoice && <p className="small muted">tool required: {turn.user.value.toolChoice}</p>}
      </div>
      <div className="sess-steps">
        {turn.items.map((item) =>
          item.kind === "tool" ? (
            turn.tools[item.id] && <ToolCall key={`tool-${item.id}`} call={turn.tools[item.id]} />
          ) : (
            <TurnEvent key={String(item.seq)} item={item} />
          ),
        )}
      </div>
      <span className="sess-who">Agent</span>
      <AgentText turn={turn} />
      {firstTokenMs !== undefined && (
        <p className="small muted sess-metric">first token after {Math.round(firstTokenMs)} ms</p>
      )}
      {current && <TurnControls turn={turn} onTurn={onTurn} />}
    </article>
  );
}
