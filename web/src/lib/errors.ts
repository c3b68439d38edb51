// What went wrong, in the platform's own words: the gRPC code and the one ErrorInfo every
// SKM error carries (reason, domain, metadata), plus BadRequest's field violations. The
// details arrive in grpc-status-details-bin; google.rpc's messages are not part of our
// generated code, so their few fields are read here with the protobuf wire reader.
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

export interface Problem {
  /** The canonical code's name, e.g. PERMISSION_DENIED. */
  code: string;
  /** ErrorInfo.reason, e.g. SESSION_NOT_FOUND; empty when the error carried none. */
  reason: string;
  domain: string;
  metadata: Record<string, string>;
  message: string;
  fieldViolations: { field: string; description: string }[];
}

const ERROR_INFO = "google.rpc.ErrorInfo";
const BAD_REQUEST = "google.rpc.BadRequest";

function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function readErrorInfo(bytes: Uint8Array) {
  const reader = new BinaryReader(bytes);
  const info = { reason: "", domain: "", metadata: {} as Record<string, string> };
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1 && wire === WireType.LengthDelimited) info.reason = reader.string();
    else if (field === 2 && wire === WireType.LengthDelimited) info.domain = reader.string();
    else if (field === 3 && wire === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, w] = entry.tag();
        if (f === 1 && w === WireType.LengthDelimited) key = entry.string();
        else if (f === 2 && w === WireType.LengthDelimited) value = entry.string();
        else entry.skip(w);
      }
      info.metadata[key] = value;
    } else reader.skip(wire);
  }
  return info;
}

function readBadRequest(bytes: Uint8Array) {
  const reader = new BinaryReader(bytes);
  const violations: { field: string; description: string }[] = [];
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1 && wire === WireType.LengthDelimited) {
      const item = new BinaryReader(reader.bytes());
      const violation = { field: "", description: "" };
      while (item.pos < item.len) {
        const [f, w] = item.tag();
        if (f === 1 && w === WireType.LengthDelimited) violation.field = item.string();
        else if (f === 2 && w === WireType.LengthDelimited) violation.description = item.string();
        else item.skip(w);
      }
      violations.push(violation);
    } else reader.skip(wire);
  }
  return violations;
}

/** Any thrown value as a Problem. */
export function describe(error: unknown): Problem {
  if (!(error instanceof ConnectError)) {
    return {
      code: "CLIENT",
      reason: "",
      domain: "",
      metadata: {},
      message: error instanceof Error ? error.message : String(error),
      fieldViolations: [],
    };
  }
  const problem: Problem = {
    code: codeName(error.code),
    reason: "",
    domain: "",
    metadata: {},
    message: error.rawMessage,
    fieldViolations: [],
  };
  for (const detail of error.details) {
    if (!("type" in detail)) continue;
    try {
      if (detail.type === ERROR_INFO) Object.assign(problem, readErrorInfo(detail.value));
      else if (detail.type === BAD_REQUEST) problem.fieldViolations.push(...readBadRequest(detail.value));
    } catch {
      // A detail we cannot read: the code and message still say what happened.
    }
  }
  return problem;
}

/** One line for a status bar or a toast: "REASON: message" (or the code). */
export function summary(error: unknown): string {
  const problem = describe(error);
  return `${problem.reason || problem.code}: ${problem.message}`;
}

/** True for the errors where the contract allows a retry. */
export function retryable(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unavailable;
}
