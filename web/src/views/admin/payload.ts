// Held payloads (google.protobuf.Any) as people read them. The requesting services hold
// skm.tools.v1.ExecuteToolRequest today (svc_tools and svc_conversation); anything else is
// shown as proto JSON when its type is in the registry below, or named as undecodable.
import { createRegistry, toJson, type JsonValue } from "@bufbuild/protobuf";
import { anyIs, anyUnpack, AnySchema, type Any } from "@bufbuild/protobuf/wkt";
import { file_skm_events_v1_event } from "../../gen/skm/events/v1/event_pb.js";
import { ExecuteToolRequestSchema, file_skm_tools_v1_tool_service } from "../../gen/skm/tools/v1/tool_service_pb.js";
import { lastSegment, prettyJson } from "./format";

/** The message types a held payload or an audit event may carry inside an Any. */
export const registry = createRegistry(file_skm_tools_v1_tool_service, file_skm_events_v1_event);

export interface ShownPayload {
  /** The tool id when the payload runs a tool. */
  tool: string;
  /** The tool's arguments (pretty JSON), or the whole payload as JSON. */
  body: string;
  /** Other facts worth a line: persona, timeout, the type. */
  facts: [string, string][];
}

export function showPayload(payload: Any | undefined): ShownPayload | undefined {
  if (!payload) return undefined;
  if (anyIs(payload, ExecuteToolRequestSchema)) {
    const request = anyUnpack(payload, ExecuteToolRequestSchema);
    if (request) {
      const facts: [string, string][] = [["tool", request.tool]];
      if (request.persona) facts.push(["persona", request.persona]);
      if (request.turn) facts.push(["turn", request.turn]);
      if (request.timeout) facts.push(["timeout", `${Number(request.timeout.seconds)} s`]);
      return { tool: lastSegment(request.tool), body: prettyJson(request.argumentsJson) || "{}", facts };
    }
  }
  const type = payload.typeUrl.replace(/^.*\//, "");
  try {
    const json: JsonValue = toJson(AnySchema, payload, { registry });
    return { tool: "", body: JSON.stringify(json, null, 2), facts: [["type", type]] };
  } catch {
    return {
      tool: "",
      body: `(${payload.value.length} bytes of ${type}, a type this page cannot decode)`,
      facts: [["type", type]],
    };
  }
}
