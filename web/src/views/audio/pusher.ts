// The push half of the browser pair: the microphone's 20 ms frames, batched into PushAudio
// calls of about 100 ms, in order, one call in flight at a time. The contract's sequence
// rules (audio_service.proto, PushAudio): numbers from 1 with no gaps; a retry of an
// accepted number is acknowledged, so UNAVAILABLE is retried with the same number and bytes;
// a gap is refused with the expected number, and sending resumes from there; nothing after
// `last`. When the voice stream is gone (the event stream dropped), the audio not yet
// accepted waits and goes to the next voice stream, numbered from 1 again.
import { Code, ConnectError } from "@connectrpc/connect";
import { api } from "../../lib/api";
import { describe, retryable } from "../../lib/errors";
import { BATCH_BYTES, MAX_CHUNK_BYTES, concat } from "./pcm";

/**
 * Worth the same call again: UNAVAILABLE (the contract's retryable code), or the request never
 * got an answer at all (the network failed: connect-web reports UNKNOWN with no status from
 * the server). Safe either way, since a sequence already accepted is only acknowledged.
 */
function transient(error: unknown): boolean {
  if (retryable(error)) return true;
  return error instanceof ConnectError && error.code === Code.Unknown && error.metadata.get("grpc-status") === null;
}

interface Batch {
  sequence: number;
  audio: Uint8Array;
  last: boolean;
}

// While no voice stream takes audio (reconnecting), at most this much waits: 10 s.
const BACKLOG_BYTES = 320_000;
const RETRY_BASE_MS = 200;
const RETRY_MAX_MS = 3_000;
// About half a minute of retries for one call; past that the failure is shown.
const MAX_RETRIES = 12;

export interface PusherEvents {
  /** A call was accepted (the total so far). */
  accepted(calls: number): void;
  /** The voice stream no longer exists: wait for the event stream to open a new one. */
  gone(): void;
  /** A refusal no retry can fix; pushing stops. */
  failed(error: unknown): void;
  /** The `last` chunk was accepted: the input is closed. */
  ended(): void;
}

export class AudioPusher {
  private stream = "";
  private frames: Uint8Array[] = [];
  private framesBytes = 0;
  // Made but not yet accepted, in sequence order; the first is the one sent next (or now).
  private batches: Batch[] = [];
  private nextSequence = 1;
  private busy = false;
  private ending = false;
  private endAccepted = false;
  private calls = 0;
  private closed = false;
  private abort = new AbortController();

  constructor(private readonly events: PusherEvents) {}

  /** Feed this voice stream from now on; unaccepted audio is renumbered from 1 for it. */
  attach(voiceStream: string): void {
    this.stream = voiceStream;
    this.abort.abort(); // a call to the previous stream has nothing more to say
    this.abort = new AbortController();
    this.busy = false;
    this.batches.forEach((batch, index) => (batch.sequence = index + 1));
    this.nextSequence = this.batches.length + 1;
    this.endAccepted = false; // a new stream needs its own `last`
    this.pump();
  }

  /** The voice stream is gone; keep the audio until attach(). */
  detach(): void {
    this.stream = "";
    this.abort.abort();
  }

  /** One frame from the microphone. */
  add(frame: Uint8Array): void {
    if (this.ending || this.closed) return;
    this.frames.push(frame);
    this.framesBytes += frame.byteLength;
    while (this.framesBytes > BACKLOG_BYTES && this.frames.length > 1) {
      this.framesBytes -= this.frames.shift()!.byteLength; // the oldest audio goes first
    }
    this.pump();
  }

  /** No more audio: what is left goes out, the last call with `last` set. */
  finish(): void {
    this.ending = true;
    this.pump();
  }

  /** Stops everything (the view left or hung up). */
  close(): void {
    this.closed = true;
    this.detach();
  }

  private nextBatch(): Batch | undefined {
    if (this.batches.length > 0) return this.batches[0];
    if (this.ending && this.endAccepted) return undefined;
    if (this.framesBytes < BATCH_BYTES && !(this.ending && !this.endAccepted)) return undefined;
    const parts: Uint8Array[] = [];
    let size = 0;
    while (this.frames.length > 0 && size + this.frames[0].byteLength <= MAX_CHUNK_BYTES) {
      const frame = this.frames.shift()!;
      parts.push(frame);
      size += frame.byteLength;
    }
    this.framesBytes -= size;
    const batch = {
      sequence: this.nextSequence++,
      audio: concat(parts, size),
      last: this.ending && this.frames.length === 0,
    };
    this.batches.push(batch);
    return batch;
  }

  private pump(): void {
    if (this.busy || !this.stream || this.closed) return;
    const batch = this.nextBatch();
    if (!batch) return;
    this.busy = true;
    void this.send(batch, this.stream, this.abort.signal);
  }

  private async send(batch: Batch, stream: string, signal: AbortSignal): Promise<void> {
    // Returning without clearing `busy` is deliberate where the stream was let go: attach()
    // clears it for the next one.
    for (let attempt = 0; ; attempt++) {
      try {
        const reply = await api.audio.pushAudio(
          { voiceStream: stream, sequence: BigInt(batch.sequence), audio: batch.audio, last: batch.last },
          { signal },
        );
        if (signal.aborted) return;
        const accepted = Number(reply.acceptedSequence);
        this.batches = this.batches.filter((b) => b.sequence > accepted);
        this.events.accepted(++this.calls);
        if (batch.last && accepted >= batch.sequence) {
          this.endAccepted = true;
          this.events.ended();
        }
        break;
      } catch (error) {
        if (signal.aborted) return;
        if (transient(error) && attempt < MAX_RETRIES) {
          // The same sequence and bytes again: an accepted one is only acknowledged.
          await new Promise((resolve) => setTimeout(resolve, Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt)));
          if (signal.aborted) return;
          continue;
        }
        const problem = describe(error);
        if (problem.reason === "AUDIO_SEQUENCE_GAP") {
          const expected = Number(problem.metadata.expected_sequence);
          this.batches = this.batches.filter((b) => b.sequence >= expected);
          if (!(expected > 0) || this.batches[0]?.sequence !== expected) {
            this.detach();
            this.events.failed(error); // the server wants audio this page no longer holds
            return;
          }
          break; // pump() sends from the expected one
        }
        if (problem.reason === "AUDIO_AFTER_END") {
          // The stream's input is closed already: nothing more can go to it.
          this.batches = [];
          this.ending = true;
          this.endAccepted = true;
          this.events.ended();
          break;
        }
        this.detach();
        if (problem.reason === "VOICE_STREAM_NOT_FOUND") this.events.gone();
        else this.events.failed(error);
        return;
      }
    }
    this.busy = false;
    this.pump();
  }
}
