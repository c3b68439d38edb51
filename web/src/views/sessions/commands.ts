// The turn commands, shared by the buttons and the palette. Each carries one request_id
// for all its tries, so a retry after UNAVAILABLE cannot act twice. Which states allow
// which command follows conversation_service.proto.
import type { Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { Turn_State } from "../../gen/skm/conversation/v1/turn_pb.js";
import { api, newRequestId } from "../../lib/api";
import { retrying } from "./retry";

/** InterruptTurn: a RUNNING or AWAITING_APPROVAL turn. */
export function canInterrupt(state: Turn_State): boolean {
  return state === Turn_State.RUNNING || state === Turn_State.AWAITING_APPROVAL;
}

/** NudgeTurn: a RUNNING or INTERRUPTED turn that is the newest (not while awaiting approval). */
export function canNudge(state: Turn_State): boolean {
  return state === Turn_State.RUNNING || state === Turn_State.INTERRUPTED;
}

/** ResumeTurn: an INTERRUPTED turn that is the newest. */
export function canResume(state: Turn_State): boolean {
  return state === Turn_State.INTERRUPTED;
}

/** RerunTurn: an ended or interrupted turn while none of the session runs. */
export function canRerun(state: Turn_State): boolean {
  return (
    state === Turn_State.COMPLETED ||
    state === Turn_State.FAILED ||
    state === Turn_State.REFUSED ||
    state === Turn_State.INTERRUPTED
  );
}

export async function interruptTurn(name: string): Promise<Turn | undefined> {
  const requestId = newRequestId();
  return (await retrying(() => api.conversation.interruptTurn({ name, requestId }))).turn;
}

export async function nudgeTurn(name: string, text: string): Promise<Turn | undefined> {
  const requestId = newRequestId();
  return (await retrying(() => api.conversation.nudgeTurn({ name, text, requestId }))).turn;
}

export async function resumeTurn(name: string): Promise<Turn | undefined> {
  const requestId = newRequestId();
  return (await retrying(() => api.conversation.resumeTurn({ name, requestId }))).turn;
}

/** Returns the new turn the rerun started. */
export async function rerunTurn(name: string): Promise<Turn | undefined> {
  const requestId = newRequestId();
  return (await retrying(() => api.conversation.rerunTurn({ name, requestId }))).turn;
}
