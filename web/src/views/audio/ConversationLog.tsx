// The talk as it happens: the user's final transcripts, the one being spoken now (interim),
// and each turn of the agent with its state and answer.
import { Turn_State } from "../../gen/skm/conversation/v1/turn_pb.js";
import type { AgentLine, Line } from "./voiceConsole";

const STATES: Record<Turn_State, { text: string; badge: string }> = {
  [Turn_State.UNSPECIFIED]: { text: "starting", badge: "badge-info" },
  [Turn_State.RUNNING]: { text: "running", badge: "badge-info" },
  [Turn_State.AWAITING_APPROVAL]: { text: "awaiting approval", badge: "badge-held" },
  [Turn_State.INTERRUPTED]: { text: "interrupted", badge: "badge-held" },
  [Turn_State.COMPLETED]: { text: "completed", badge: "badge-allow" },
  [Turn_State.FAILED]: { text: "failed", badge: "badge-deny" },
  [Turn_State.REFUSED]: { text: "refused", badge: "badge-deny" },
};

function AgentItem({ line }: { line: AgentLine }) {
  const state = STATES[line.state] ?? STATES[Turn_State.UNSPECIFIED];
  const working = line.state === Turn_State.RUNNING || line.state === Turn_State.UNSPECIFIED;
  return (
    <li className="voice-line voice-agent">
      <div className="row">
        <strong>Agent</strong>
        <span className="muted small">answer {line.number}</span>
        <span className={`badge ${state.badge}`}>
          {state.text}
          {line.reason ? `: ${line.reason}` : ""}
        </span>
        {line.tools.length > 0 && <span className="small muted">tools: {line.tools.join(", ")}</span>}
      </div>
      {line.text ? (
        <p className="voice-text">{line.text}</p>
      ) : (
        working && (
          <p className="voice-text muted">{line.tokens > 0 ? `writing… (${line.tokens} tokens so far)` : "thinking…"}</p>
        )
      )}
      {line.error && <p className="voice-text voice-bad">Error {line.error}</p>}
      {line.audioNote && <p className="small muted">{line.audioNote}</p>}
    </li>
  );
}

export function ConversationLog({ lines, interim }: { lines: Line[]; interim: string }) {
  if (lines.length === 0 && !interim) {
    return <p className="muted">Nothing said yet. Start talking: your words and the agent's answers show here.</p>;
  }
  return (
    <ol className="voice-log" aria-label="Conversation">
      {lines.map((line) =>
        line.kind === "user" ? (
          <li key={`u-${line.key}`} className="voice-line voice-user">
            <div className="row">
              <strong>You</strong>
              {line.confidence > 0 && <span className="muted small">confidence {(line.confidence * 100).toFixed(0)}%</span>}
              {line.agitation !== undefined && (
                <span className="muted small">agitation {line.agitation.toFixed(2)}</span>
              )}
            </div>
            <p className="voice-text">{line.text}</p>
          </li>
        ) : (
          <AgentItem key={`a-${line.key}`} line={line} />
        ),
      )}
      {interim && (
        <li className="voice-line voice-user voice-interim">
          <div className="row">
            <strong>You</strong>
            <span className="muted small">(still speaking)</span>
          </div>
          <p className="voice-text" aria-live="off">
            {interim}
          </p>
        </li>
      )}
    </ol>
  );
}
