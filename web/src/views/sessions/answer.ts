// The readable answer inside a model's streamed output. The agent loop's replies are JSON
// tool calls (svc_conversation/toolcall.py):
//   {"thoughts": ["..."], "tool_name": "response", "tool_args": {"text": "..."}}
// so while a `response` call is being written, the answer is the (still open) JSON string
// after "text". Anything else (another tool, text the pattern does not fit) gives null and
// the view shows the raw stream instead: nothing is guessed.

const RESPONSE_CALL = /"tool_name"\s*:\s*"response"/;
const ANSWER_START = /"tool_args"\s*:\s*\{\s*"text"\s*:\s*"/;

const ESCAPES: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** The decoded prefix of a JSON string body that may stop anywhere (even mid-escape). */
function openString(body: string): string {
  let out = "";
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === '"') break;
    if (c !== "\\") {
      out += c;
      continue;
    }
    const next = body[i + 1];
    if (next === undefined) break;
    if (next === "u") {
      const hex = body.slice(i + 2, i + 6);
      if (!/^[0-9a-fA-F]{4}$/.test(hex)) break;
      out += String.fromCharCode(Number.parseInt(hex, 16));
      i += 5;
      continue;
    }
    out += ESCAPES[next] ?? next;
    i += 1;
  }
  return out;
}

/** The answer written so far, or null when the stream is not (yet) a `response` call. */
export function partialAnswer(raw: string): string | null {
  const call = RESPONSE_CALL.exec(raw);
  if (!call) return null;
  const rest = raw.slice(call.index + call[0].length);
  const start = ANSWER_START.exec(rest);
  if (!start) return null;
  return openString(rest.slice(start.index + start[0].length));
}
