// The transcript of a session as the view renders it, folded from numbered SessionEvents
// (session_event.proto explains their order). Pure: the feed dedupes by sequence before it
// dispatches, and history and live events go through the same reducer, so a reloaded page
// and a live one show the same thing.
import type {
  FinalResponse,
  ModelCall,
  SessionEvent,
  ToolCallProgress,
  ToolCallRequested,
  ToolCallResult,
  ToolCallVerdict,
  UserMessage,
} from "../../gen/skm/conversation/v1/session_event_pb.js";
import { Turn_State, type Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { turnOrdinal } from "./format";

/** A piece of streamed model text. */
export interface Delta {
  seq: bigint;
  text: string;
}

export interface Stamped<T> {
  seq: bigint;
  event: SessionEvent;
  value: T;
}

/** Everything known about one tool call, gathered by its tool_call_id. */
export interface ToolCallView {
  id: string;
  requested?: Stamped<ToolCallRequested>;
  verdict?: Stamped<ToolCallVerdict>;
  progress: Stamped<ToolCallProgress>[];
  result?: Stamped<ToolCallResult>;
}

/** One entry of a turn's timeline, in sequence order. */
export type Item =
  /** turn_state_changed, preprocessing, intervention, error: shown as they are. */
  | { kind: "event"; seq: bigint; event: SessionEvent }
  /** A finished model call with the output its attempt streamed (none once compacted). */
  | { kind: "model"; seq: bigint; event: SessionEvent; call: ModelCall; output: Delta[]; discarded: number }
  /** A tool call, placed where it was first seen; its parts live in `TurnView.tools`. */
  | { kind: "tool"; seq: bigint; id: string };

export interface TurnView {
  name: string;
  ordinal: number;
  /** The newest state: from ListTurns, then from every turn_state_changed. */
  state: Turn_State;
  /** The turn as ListTurns (or SendMessage, RerunTurn) returned it, for input text and the like. */
  meta?: Turn;
  user?: Stamped<UserMessage>;
  items: Item[];
  tools: Record<string, ToolCallView>;
  /** The model attempt streaming now: its deltas until its model_call arrives. */
  attempt: { iteration: number; deltas: Delta[] } | null;
  final?: Stamped<FinalResponse>;
  /** Sequence of the turn's first token delta, once one arrived (the first-token metric). */
  firstDelta?: bigint;
}

export interface Transcript {
  turns: Record<string, TurnView>;
  /** Turn names, oldest first. */
  order: string[];
}

export const EMPTY: Transcript = { turns: {}, order: [] };

export type Action =
  | { type: "reset" }
  /** Turns from ListTurns: states and inputs before their events arrive. */
  | { type: "turns"; turns: Turn[] }
  /** A turn a command returned (SendMessage, RerunTurn): added when not yet known. */
  | { type: "turn"; turn: Turn }
  /** New events, in sequence order, none seen before. */
  | { type: "events"; events: SessionEvent[] };

function blank(name: string): TurnView {
  return { name, ordinal: turnOrdinal(name), state: Turn_State.UNSPECIFIED, items: [], tools: {}, attempt: null };
}

function withTurn(state: Transcript, view: TurnView): Transcript {
  const known = view.name in state.turns;
  const order = known
    ? state.order
    : [...state.order, view.name].sort((a, b) => turnOrdinal(a) - turnOrdinal(b));
  return { turns: { ...state.turns, [view.name]: view }, order };
}

function tool(view: TurnView, id: string, seq: bigint): { view: TurnView; call: ToolCallView } {
  const found = view.tools[id];
  if (found) return { view, call: found };
  const call: ToolCallView = { id, progress: [] };
  return { view: { ...view, items: [...view.items, { kind: "tool", seq, id }] }, call };
}

function putTool(view: TurnView, call: ToolCallView): TurnView {
  return { ...view, tools: { ...view.tools, [call.id]: call } };
}

/** One event folded into its turn. */
function apply(view: TurnView, event: SessionEvent): TurnView {
  const seq = event.sequence;
  const e = event.event;
  switch (e.case) {
    case "turnStateChanged":
      return { ...view, state: e.value.state, items: [...view.items, { kind: "event", seq, event }] };
    case "userMessage":
      return { ...view, user: { seq, event, value: e.value } };
    case "tokenDelta": {
      const delta = { seq, text: e.value.text };
      const attempt =
        view.attempt && view.attempt.iteration === e.value.iteration
          ? { iteration: view.attempt.iteration, deltas: [...view.attempt.deltas, delta] }
          : { iteration: e.value.iteration, deltas: [delta] };
      return { ...view, attempt, firstDelta: view.firstDelta ?? seq };
    }
    case "modelCall": {
      // The deltas before a model_call belong to the attempt it reports; a failed attempt's
      // text is discarded (the next tier's attempt follows), per session_event.proto.
      const mine = view.attempt && view.attempt.iteration === e.value.iteration ? view.attempt.deltas : [];
      const failed = e.value.failureReason !== "";
      const item: Item = {
        kind: "model",
        seq,
        event,
        call: e.value,
        output: failed ? [] : mine,
        discarded: failed ? mine.length : 0,
      };
      const attempt = view.attempt?.iteration === e.value.iteration ? null : view.attempt;
      return { ...view, attempt, items: [...view.items, item] };
    }
    case "toolCallRequested": {
      const { view: next, call } = tool(view, e.value.toolCallId, seq);
      return putTool(next, { ...call, requested: { seq, event, value: e.value } });
    }
    case "toolCallVerdict": {
      const { view: next, call } = tool(view, e.value.toolCallId, seq);
      return putTool(next, { ...call, verdict: { seq, event, value: e.value } });
    }
    case "toolCallProgress": {
      const { view: next, call } = tool(view, e.value.toolCallId, seq);
      return putTool(next, { ...call, progress: [...call.progress, { seq, event, value: e.value }] });
    }
    case "toolCallResult": {
      const { view: next, call } = tool(view, e.value.toolCallId, seq);
      return putTool(next, { ...call, result: { seq, event, value: e.value } });
    }
    case "finalResponse":
      return { ...view, attempt: null, final: { seq, event, value: e.value } };
    case "preprocessing":
    case "intervention":
    case "error":
      return { ...view, items: [...view.items, { kind: "event", seq, event }] };
    default:
      // An event kind this build does not know yet: nothing to show rather than a guess.
      return view;
  }
}

export function reduce(state: Transcript, action: Action): Transcript {
  switch (action.type) {
    case "reset":
      return EMPTY;
    case "turns": {
      let next = state;
      for (const turn of action.turns) {
        const view = next.turns[turn.name] ?? { ...blank(turn.name), state: turn.state };
        next = withTurn(next, { ...view, meta: turn });
      }
      return next;
    }
    case "turn": {
      // Only new turns take the command's state: the stream may already be further along.
      const view = state.turns[action.turn.name];
      return withTurn(
        state,
        view ? { ...view, meta: action.turn } : { ...blank(action.turn.name), state: action.turn.state, meta: action.turn },
      );
    }
    case "events": {
      let next = state;
      for (const event of action.events) {
        if (!event.turn) continue;
        next = withTurn(next, apply(next.turns[event.turn] ?? blank(event.turn), event));
      }
      return next;
    }
  }
}

/** The newest turn, the one the turn controls act on. */
export function currentTurn(transcript: Transcript): TurnView | undefined {
  const name = transcript.order[transcript.order.length - 1];
  return name ? transcript.turns[name] : undefined;
}
