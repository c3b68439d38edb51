// One tool call of a turn as it unfolds: the request with its arguments, policy's verdict as
// a badge (allow / deny / held, with the reason), progress and output streamed live, then
// the single result. Memory tools (memory_save/load/delete/forget, svc_tools/catalogue.py)
// also get a plain-words summary of what was saved, recalled or forgotten.
import { OutputChunk_Stream, FailureReason } from "../../gen/skm/tools/v1/execution_pb.js";
import { Verdict } from "../../gen/skm/type/v1/policy_decision_pb.js";
import type { PolicyDecision } from "../../gen/skm/type/v1/policy_decision_pb.js";
import type { Stamped, ToolCallView } from "./transcript";
import type { ToolCallProgress } from "../../gen/skm/conversation/v1/session_event_pb.js";
import { jsonObject, lastSegment, prettyJson } from "./format";

function VerdictBadge({ decision }: { decision: PolicyDecision | undefined }) {
  const verdict = decision?.verdict ?? Verdict.UNSPECIFIED;
  const [label, tone] =
    verdict === Verdict.ALLOW
      ? ["allow", "badge-allow"]
      : verdict === Verdict.DENY
        ? ["deny", "badge-deny"]
        : verdict === Verdict.REQUIRES_APPROVAL
          ? ["held", "badge-held"]
          : ["no verdict", "badge-info"];
  return (
    <>
      <span className={`badge ${tone}`}>{label}</span>
      {decision?.reason && <span className="mono small"> {decision.reason}</span>}
      {decision?.blockedAction && (
        <span className="small">
          {" "}
          waiting as <a href="#/approvals">{lastSegment(decision.blockedAction)}</a> for an operator
        </span>
      )}
    </>
  );
}

/** The output chunks of one stream, decoded in order so a character split across chunks survives. */
function decodeChunks(progress: Stamped<ToolCallProgress>[]): { seq: bigint; text: string; stderr: boolean; gap: boolean }[] {
  const decoders = new Map<OutputChunk_Stream, TextDecoder>();
  const expected = new Map<OutputChunk_Stream, bigint>();
  const out: { seq: bigint; text: string; stderr: boolean; gap: boolean }[] = [];
  for (const item of progress) {
    const update = item.value.update;
    if (update.case !== "output") continue;
    const chunk = update.value;
    let decoder = decoders.get(chunk.stream);
    if (!decoder) {
      decoder = new TextDecoder();
      decoders.set(chunk.stream, decoder);
    }
    // The offset tells where the bytes belong; a jump means output we never received.
    const gap = chunk.offset !== (expected.get(chunk.stream) ?? 0n);
    expected.set(chunk.stream, chunk.offset + BigInt(chunk.data.length));
    out.push({
      seq: item.seq,
      text: decoder.decode(chunk.data, { stream: true }),
      stderr: chunk.stream === OutputChunk_Stream.STDERR,
      gap,
    });
  }
  return out;
}

function Output({ progress }: { progress: Stamped<ToolCallProgress>[] }) {
  const chunks = decodeChunks(progress);
  if (chunks.length === 0) return null;
  return (
    <pre className="sess-output" aria-label="Tool output">
      {chunks.map((chunk) => (
        <span key={String(chunk.seq)} data-sequence={String(chunk.seq)} className={chunk.stderr ? "sess-stderr" : undefined}>
          {chunk.gap && <em className="muted">[output missing here]</em>}
          {chunk.text}
        </span>
      ))}
    </pre>
  );
}

function ProgressLines({ progress }: { progress: Stamped<ToolCallProgress>[] }) {
  const reports = progress.filter((item) => item.value.update.case === "progress");
  if (reports.length === 0) return null;
  return (
    <ul className="sess-progress small">
      {reports.map((item) => {
        const update = item.value.update;
        if (update.case !== "progress") return null;
        const fraction = update.value.fraction;
        return (
          <li key={String(item.seq)} data-sequence={String(item.seq)}>
            {fraction !== undefined && <span className="mono">{Math.round(fraction * 100)}% </span>}
            {update.value.message}
          </li>
        );
      })}
    </ul>
  );
}

function str(value: unknown): string {
  return typeof value === "string" ? value : value === undefined ? "" : JSON.stringify(value);
}

/** What a memory tool did, in words, from its arguments and (once there) its result. */
function MemorySummary({ tool, args, output }: { tool: string; args: Record<string, unknown> | null; output: Record<string, unknown> | null }) {
  const areas = Array.isArray(args?.areas) ? (args.areas as unknown[]).map(str).join(", ") : "";
  const deleted = Array.isArray(output?.deleted) ? (output.deleted as unknown[]).map(str) : null;
  switch (tool) {
    case "memory_save":
      return (
        <p className="sess-memory">
          Save to memory{args?.area ? ` (area ${str(args.area)})` : ""}: <q>{str(args?.text)}</q>
          {output?.id !== undefined && <span className="muted small"> saved as {str(output.id)}</span>}
        </p>
      );
    case "memory_load": {
      const memories = Array.isArray(output?.memories) ? (output.memories as Record<string, unknown>[]) : null;
      return (
        <div className="sess-memory">
          <p>
            Recall from memory{areas ? ` (${areas})` : ""}: <q>{str(args?.query)}</q>
          </p>
          {memories && memories.length === 0 && <p className="muted small">Nothing recalled.</p>}
          {memories && memories.length > 0 && (
            <ul className="small">
              {memories.map((memory, index) => (
                <li key={str(memory.id) || index}>
                  {str(memory.text)}{" "}
                  <span className="muted">
                    ({str(memory.area)}
                    {typeof memory.score === "number" ? `, score ${memory.score.toFixed(2)}` : ""})
                  </span>
                </li>
              ))}
            </ul>
          )}
        </div>
      );
    }
    case "memory_delete":
      return (
        <p className="sess-memory">
          Delete memories: <span className="mono small">{Array.isArray(args?.ids) ? (args.ids as unknown[]).map(str).join(", ") : ""}</span>
          {deleted && <span className="muted small"> deleted {deleted.length}</span>}
        </p>
      );
    case "memory_forget":
      return (
        <p className="sess-memory">
          Forget memories like <q>{str(args?.query)}</q>
          {areas ? ` (${areas})` : ""}
          {deleted && <span className="muted small"> forgot {deleted.length}</span>}
        </p>
      );
    default:
      return null;
  }
}

export function ToolCall({ call }: { call: ToolCallView }) {
  const requested = call.requested?.value;
  const tool = requested ? lastSegment(requested.tool) : "tool";
  const outcome = call.result?.value.result?.outcome;
  const output = outcome?.case === "success" ? outcome.value.outputJson : "";
  const isMemory = tool.startsWith("memory_");
  const subordinate = tool === "call_subordinate" ? call.result?.value.execution || call.progress[0]?.value.execution : "";

  return (
    <section className="sess-tool" aria-label={`Tool call ${tool}`}>
      <div className="row" data-sequence={call.requested ? String(call.requested.seq) : undefined}>
        {isMemory && <span className="badge badge-info">memory</span>}
        <strong>
          Tool call <code>{tool}</code>
        </strong>
        {requested && <span className="muted small">iteration {requested.iteration}</span>}
      </div>
      {requested && isMemory && (
        <MemorySummary tool={tool} args={jsonObject(requested.argumentsJson)} output={output ? jsonObject(output) : null} />
      )}
      {requested && (
        <details open={!isMemory}>
          <summary className="small">arguments</summary>
          <pre className="sess-args">{prettyJson(requested.argumentsJson)}</pre>
        </details>
      )}
      {call.verdict && (
        <div className="small" data-sequence={String(call.verdict.seq)}>
          Policy: <VerdictBadge decision={call.verdict.value.decision} />
        </div>
      )}
      {subordinate && (
        <p className="small">
          Subordinate agent: <a href={`#/sessions/${lastSegment(subordinate)}`}>session {lastSegment(subordinate)}</a>
        </p>
      )}
      <ProgressLines progress={call.progress} />
      <Output progress={call.progress} />
      {call.result && (
        <div data-sequence={String(call.result.seq)} className="sess-result">
          {outcome?.case === "success" && (
            <details open={!isMemory && outcome.value.outputJson.length < 2000}>
              <summary className="small">
                <span className="badge badge-allow">result</span>
              </summary>
              <pre className="sess-args">{prettyJson(outcome.value.outputJson)}</pre>
            </details>
          )}
          {outcome?.case === "failure" && (
            <p className="small">
              <span className="badge badge-deny">failed</span>{" "}
              <span className="mono">{FailureReason[outcome.value.reason] ?? "UNSPECIFIED"}</span>
              {outcome.value.message && <span>: {outcome.value.message}</span>}
            </p>
          )}
          {!outcome?.case && <p className="small muted">The call ended without a result.</p>}
        </div>
      )}
    </section>
  );
}
