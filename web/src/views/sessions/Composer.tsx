// The message box. Enter sends, Shift+Enter starts a new line. SendMessage refuses a new
// message while the newest turn is RUNNING or AWAITING_APPROVAL (TURN_IN_PROGRESS, no
// queuing), so Send is disabled then; an interrupted turn does not block a new message.
import { useEffect, useState, type RefObject } from "react";
import type { Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api, newRequestId } from "../../lib/api";
import { tenantName, useClaims } from "../../lib/auth";
import { retrying } from "./retry";

export function Composer({
  session,
  blocked,
  inputRef,
  onSending,
  onSent,
}: {
  session: string;
  /** Why a message cannot be sent now, or "" when it can. */
  blocked: string;
  inputRef: RefObject<HTMLTextAreaElement | null>;
  /** Called when Send is pressed, before the call (the first-token metric starts here). */
  onSending: (requestId: string) => void;
  onSent: (requestId: string, turn: Turn | undefined) => void;
}) {
  const [draft, setDraft] = useState("");
  const [sending, setSending] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const tools = useToolIds();
  // The tool the model must call first (SendMessage.tool_choice); "" lets the model choose.
  const [tool, setTool] = useState("");
  const disabled = sending || blocked !== "";

  const send = async () => {
    if (disabled) return;
    if (!draft.trim()) {
      inputRef.current?.focus();
      return;
    }
    // One request_id for every try: a retry after UNAVAILABLE returns the same turn.
    const requestId = newRequestId();
    onSending(requestId);
    setSending(true);
    setError(null);
    try {
      const reply = await retrying(() => api.conversation.sendMessage({ session, text: draft, requestId, toolChoice: tool }));
      setDraft("");
      onSent(requestId, reply.turn);
    } catch (err) {
      setError(err);
    } finally {
      setSending(false);
    }
  };

  return (
    <form
      className="sess-composer stack"
      onSubmit={(event) => {
        event.preventDefault();
        void send();
      }}
    >
      <label htmlFor="sess-message">Message</label>
      <textarea
        id="sess-message"
        ref={inputRef}
        rows={3}
        value={draft}
        maxLength={32768}
        aria-describedby="sess-composer-hint"
        onChange={(event) => setDraft(event.target.value)}
        onKeyDown={(event) => {
          if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
            event.preventDefault();
            void send();
          }
        }}
      />
      <div className="row">
        <label htmlFor="sess-tool" className="small">
          Tool
        </label>
        <select id="sess-tool" value={tool} onChange={(event) => setTool(event.target.value)}>
          <option value="">The model chooses</option>
          {tools.map((id) => (
            <option key={id} value={id}>
              {id}
            </option>
          ))}
        </select>
        <button type="submit" className="btn btn-primary" disabled={disabled}>
          Send
        </button>
        <span id="sess-composer-hint" className="small muted">
          {sending ? "Sending…" : blocked || "Enter sends, Shift+Enter adds a line."}
        </span>
      </div>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
    </form>
  );
}

/** The tenant's tool ids (the last segment of each tool's name), for the Tool select; empty
 * when the list cannot be read (the model then chooses, as without the select). */
function useToolIds(): string[] {
  const claims = useClaims();
  const [ids, setIds] = useState<string[]>([]);
  useEffect(() => {
    let live = true;
    api.tools
      .listTools({ parent: tenantName(claims), pageSize: 100 })
      .then((reply) => live && setIds(reply.tools.map((t) => t.name.split("/").pop() ?? t.name)))
      .catch(() => live && setIds([]));
    return () => {
      live = false;
    };
  }, [claims]);
  return ids;
}
