// The agent's voice: LINEAR16 chunks from the event stream, each made an AudioBuffer at the
// stream's output rate (Web Audio resamples to the device) and scheduled right after the
// previous one, so the answer plays without gaps however the chunks arrive. A barge-in or an
// INTERRUPTED turn drops what is scheduled at once.
import { linear16ToFloat } from "./pcm";

// Headroom for the first chunk after silence: scheduling "now" would clip its start.
const LEAD_SECONDS = 0.05;

export class Player {
  private nextStart = 0;
  private readonly scheduled = new Map<string, Set<AudioBufferSourceNode>>();
  // A chunk may end mid-sample; the odd byte waits for the turn's next chunk.
  private readonly carry = new Map<string, number>();

  constructor(
    private readonly context: AudioContext,
    /** Called when playback starts or stops, so the status can follow. */
    private readonly onChange: () => void,
  ) {}

  /** Schedules one chunk of `turn`'s answer; false when it held no whole sample. */
  enqueue(turn: string, chunk: Uint8Array, sampleRate: number): boolean {
    let bytes = chunk;
    const odd = this.carry.get(turn);
    if (odd !== undefined) {
      bytes = new Uint8Array(chunk.byteLength + 1);
      bytes[0] = odd;
      bytes.set(chunk, 1);
      this.carry.delete(turn);
    }
    if (bytes.byteLength % 2 === 1) {
      this.carry.set(turn, bytes[bytes.byteLength - 1]);
      bytes = bytes.subarray(0, bytes.byteLength - 1);
    }
    if (bytes.byteLength === 0) return false;
    const samples = linear16ToFloat(bytes);
    const buffer = this.context.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const wasPlaying = this.playing();
    const start = Math.max(this.nextStart, this.context.currentTime + LEAD_SECONDS);
    source.start(start);
    this.nextStart = start + buffer.duration;
    let sources = this.scheduled.get(turn);
    if (!sources) this.scheduled.set(turn, (sources = new Set()));
    sources.add(source);
    source.onended = () => {
      sources.delete(source);
      if (sources.size === 0 && this.scheduled.get(turn) === sources) this.scheduled.delete(turn);
      if (!this.playing()) this.onChange();
    };
    if (!wasPlaying) this.onChange();
    return true;
  }

  /** Whether any chunk is scheduled or sounding. */
  playing(): boolean {
    return this.scheduled.size > 0;
  }

  /** Drops `turn`'s audio now, or everything without a turn. */
  stop(turn?: string): void {
    const turns = turn === undefined ? [...this.scheduled.keys()] : [turn];
    for (const name of turns) {
      for (const source of this.scheduled.get(name) ?? []) {
        source.onended = null;
        try {
          source.stop();
        } catch {
          // Already stopped: nothing to silence.
        }
        source.disconnect();
      }
      this.scheduled.delete(name);
      this.carry.delete(name);
    }
    if (this.scheduled.size === 0) this.nextStart = 0;
    this.onChange();
  }
}
