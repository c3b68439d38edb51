// Small helpers for raw audio and the contract's durations.
import type { Duration } from "@bufbuild/protobuf/wkt";

/** The input format of every voice stream the console opens: 16 kHz mono LINEAR16. */
export const INPUT_RATE = 16_000;
/** 20 ms of it, the frame the worklet posts. */
export const FRAME_BYTES = 640;
/** 100 ms: what one PushAudio call carries in the steady state. */
export const BATCH_BYTES = 3_200;
/** The contract's limit on the audio of one message. */
export const MAX_CHUNK_BYTES = 32 * 1024;

/** Signed 16-bit little-endian samples as floats in [-1, 1); an odd trailing byte is ignored. */
export function linear16ToFloat(bytes: Uint8Array): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 0x8000;
  return out;
}

/** Several byte arrays as one. */
export function concat(parts: Uint8Array[], length = parts.reduce((n, p) => n + p.byteLength, 0)): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** A Duration in milliseconds; undefined when the message left it unset (not measured). */
export function durationMs(duration: Duration | undefined): number | undefined {
  if (!duration) return undefined;
  return Number(duration.seconds) * 1000 + duration.nanos / 1e6;
}
