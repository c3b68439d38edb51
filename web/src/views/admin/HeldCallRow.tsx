// One held call (blocked action) as a table row: what it would do, for whom, why policy held
// it, its payload, and, while it is PENDING, the operator's note and decision.
import { useId } from "react";
import { BlockedAction_State, type BlockedAction } from "../../gen/skm/policy/v1/blocked_action_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { enumLabel, lastSegment, Time } from "./format";
import { showPayload } from "./payload";

export type Verdict = "approve" | "reject";

const STATE_BADGE: Partial<Record<BlockedAction_State, string>> = {
  [BlockedAction_State.PENDING]: "badge-held",
  [BlockedAction_State.APPROVED]: "badge-allow",
  [BlockedAction_State.EXECUTING]: "badge-allow",
  [BlockedAction_State.EXECUTED]: "badge-allow",
  [BlockedAction_State.REJECTED]: "badge-deny",
};

/** What the call does, in a few words: the tool it runs, else the checked relation. */
export function actionTitle(action: BlockedAction): string {
  const tool = showPayload(action.payload)?.tool;
  if (tool) return tool;
  const object = action.check?.object ?? "";
  return object ? `${action.check?.relation ?? ""} ${lastSegment(object)}`.trim() : action.summary || lastSegment(action.name);
}

export function HeldCallRow({
  action,
  selected,
  note,
  busy,
  error,
  onSelect,
  onNote,
  onDecide,
}: {
  action: BlockedAction;
  selected: boolean;
  note: string;
  busy: boolean;
  error: unknown;
  onSelect(): void;
  onNote(note: string): void;
  onDecide(verdict: Verdict): void;
}) {
  const id = useId();
  const titleId = `${id}-title`;
  const payload = showPayload(action.payload);
  const pending = action.state === BlockedAction_State.PENDING;
  const title = actionTitle(action);
  const sessionId = action.session ? lastSegment(action.session) : "";
  const user = action.principal?.user ?? "";

  return (
    <tr className={selected ? "held-row selected" : "held-row"} onFocusCapture={onSelect}>
      <td>
        <input
          type="radio"
          name="held-call-selected"
          checked={selected}
          onChange={onSelect}
          aria-label={`Select held call ${title}`}
        />
      </td>
      <th scope="row" id={titleId}>
        <strong>{title}</strong>
        {action.summary && <div className="small">{action.summary}</div>}
        {action.check && (
          <div className="mono small muted">
            {action.check.relation} on {action.check.object}
          </div>
        )}
      </th>
      <td>
        {sessionId ? (
          <a href={`#/sessions/${encodeURIComponent(sessionId)}`} title={action.session}>
            {sessionId}
          </a>
        ) : (
          <span className="muted">none</span>
        )}
      </td>
      <td title={user}>{user ? lastSegment(user) : <span className="muted">unknown</span>}</td>
      <td>
        {action.decision?.reason ? (
          <span className="badge badge-held">{action.decision.reason}</span>
        ) : (
          <span className="muted">—</span>
        )}
      </td>
      <td>
        <Time ts={action.createTime} />
      </td>
      <td>
        {/* Only a pending or approved entry can still expire. */}
        {action.state === BlockedAction_State.PENDING || action.state === BlockedAction_State.APPROVED ? (
          <Time ts={action.expireTime} />
        ) : (
          <span className="muted">—</span>
        )}
      </td>
      <td className="held-payload">
        {payload ? (
          <details>
            <summary>Arguments</summary>
            <dl className="kv small">
              {payload.facts.map(([k, v]) => (
                <div key={k}>
                  <dt>{k}</dt>
                  <dd className="mono">{v}</dd>
                </div>
              ))}
            </dl>
            <pre>{payload.body}</pre>
          </details>
        ) : (
          <span className="muted">none</span>
        )}
      </td>
      <td>
        <span className={`badge ${STATE_BADGE[action.state] ?? "badge-info"}`}>
          {enumLabel(BlockedAction_State, action.state)}
        </span>
        {action.resolver && <div className="small">by {lastSegment(action.resolver)}</div>}
        {action.resolveTime && (
          <div className="small muted">
            <Time ts={action.resolveTime} />
          </div>
        )}
        {!pending && action.note && <div className="small held-note">“{action.note}”</div>}
        {action.outcome && (
          <div className="small">
            {action.outcome.succeeded ? "ran" : `failed: ${action.outcome.failureReason || "no reason given"}`}
          </div>
        )}
      </td>
      <td className="held-decision">
        {pending && (
          <div className="stack">
            <label htmlFor={`${id}-note`}>Note</label>
            <input
              id={`${id}-note`}
              type="text"
              value={note}
              maxLength={2000}
              onChange={(event) => onNote(event.target.value)}
              placeholder="optional: why"
            />
            <div className="row">
              <button
                type="button"
                className="btn btn-primary btn-small"
                disabled={busy}
                aria-describedby={titleId}
                onClick={() => onDecide("approve")}
              >
                Approve
              </button>
              <button
                type="button"
                className="btn btn-danger btn-small"
                disabled={busy}
                aria-describedby={titleId}
                onClick={() => onDecide("reject")}
              >
                Reject
              </button>
            </div>
          </div>
        )}
        <ErrorBanner error={error} />
      </td>
    </tr>
  );
}
