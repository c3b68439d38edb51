// The voice console's engine, outside React: one talk with a session's agent over the
// browser pair of AudioService (audio_service.proto). StreamVoiceEvents opens the voice
// stream and brings its events (transcripts, the agent's session events, its spoken answer,
// quality metrics); the microphone's audio goes to it through PushAudio (pusher.ts).
//
// A talk runs from "Start talking" until the server ends the stream after "Stop" (it answers
// the last utterance first), or until "Hang up". When the event stream drops, the voice
// stream is gone with it (the proto's rule): a new one is opened on the same session, the
// audio not yet accepted goes to it, and the session events missed meanwhile are replayed
// from ConversationService.StreamEvents (session events are durable; audio is not).
//
// The view reads a snapshot (useSyncExternalStore); changes are batched into one snapshot
// every 50 ms so that audio chunks do not re-render the page each time.
import { Code, ConnectError } from "@connectrpc/connect";
import type { QualityMetrics } from "../../gen/skm/audio/v1/audio_metrics_pb.js";
import type { VoiceEvent } from "../../gen/skm/audio/v1/audio_service_pb.js";
import { VoiceActivity_Kind } from "../../gen/skm/audio/v1/recognition_pb.js";
import type { SessionEvent } from "../../gen/skm/conversation/v1/session_event_pb.js";
import { Turn_State } from "../../gen/skm/conversation/v1/turn_pb.js";
import { AudioEncoding } from "../../gen/skm/type/v1/audio_format_pb.js";
import { api } from "../../lib/api";
import { summary } from "../../lib/errors";
import { startCapture, type Capture } from "./capture";
import { INPUT_RATE } from "./pcm";
import { Player } from "./player";
import { probe } from "./probe";
import { AudioPusher } from "./pusher";

export type Status = "idle" | "connecting" | "listening" | "thinking" | "speaking" | "reconnecting";

/** A final transcript of the user. */
export interface UserLine {
  kind: "user";
  key: string;
  text: string;
  confidence: number;
  /** From the utterance's AudioFeatures, when they came. */
  agitation?: number;
}

/** One turn of the agent. */
export interface AgentLine {
  kind: "agent";
  key: string;
  turn: string;
  /** 1, 2, ... in the order this page saw the turns; the latency table uses it too. */
  number: number;
  state: Turn_State;
  reason: string;
  text: string;
  error: string;
  audioNote: string;
  tools: string[];
  tokens: number;
}

export type Line = UserLine | AgentLine;

export interface MetricsRow {
  turn: string;
  number: number;
  metrics: QualityMetrics;
}

export interface TalkOptions {
  session: string;
  /** "voices/{voice}"; empty: the persona's. */
  voice: string;
  /** BCP-47; empty: detected. */
  language: string;
  interim: boolean;
  bargeIn: boolean;
}

export interface Snapshot {
  status: Status;
  /** A talk is on: from Start until its stream ends or it is hung up. */
  active: boolean;
  capturing: boolean;
  stopping: boolean;
  voiceStream: string;
  outputRate: number;
  lines: Line[];
  interim: string;
  metrics: MetricsRow[];
  error: unknown;
  notice: string;
  chunksSent: number;
  audioBytesReceived: number;
  audioChunksPlayed: number;
}

const ENDED = new Set([Turn_State.COMPLETED, Turn_State.FAILED, Turn_State.REFUSED, Turn_State.INTERRUPTED]);
// Reopening a dropped voice stream: tries in a row (without a single event in between).
const MAX_REOPENS = 6;
const REOPEN_BASE_MS = 500;
const REOPEN_MAX_MS = 8_000;
// The replay of missed session events gives up after this long.
const GAP_FILL_MS = 15_000;
const NOTIFY_MS = 50;

/** Errors after which a new voice stream may do better: the network or a service went away. */
function reopenable(error: unknown): boolean {
  if (!(error instanceof ConnectError)) return false;
  return [Code.Unavailable, Code.Unknown, Code.Internal, Code.Aborted, Code.DeadlineExceeded].includes(error.code);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class VoiceConsole {
  private readonly listeners = new Set<() => void>();
  private snap: Snapshot;
  private timer: ReturnType<typeof setTimeout> | undefined;

  private context: AudioContext | undefined;
  private player: Player | undefined;
  private capture: Capture | undefined;
  private pusher: AudioPusher | undefined;
  private streamAbort: AbortController | undefined;
  private gapAbort: AbortController | undefined;
  private options: TalkOptions | undefined;

  // Bumped by every start and hang-up: callbacks of an older talk see it and stop.
  private generation = 0;
  private active = false;
  private stopping = false;
  private reconnecting = false;
  private voiceStream = "";
  private outputRate = 0;
  private streams = 0; // voice streams opened in this talk (utterance numbers restart in each)
  private failures = 0;
  private error: unknown = undefined;
  private notice = "";

  private lines: Line[] = [];
  private interim = "";
  private metrics: MetricsRow[] = [];
  private readonly answers = new Map<string, AgentLine>();
  private readonly seen = new Set<bigint>();
  private lastSequence = 0n;
  private lastTurn = ""; // the turn of the latest event: quality_metrics follow their turn's
  private awaitingTurn = false;
  private readonly dropped = new Set<string>();
  private readonly audioDone = new Set<string>();
  // Turns with events in the current talk; those of earlier talks no longer keep it "thinking".
  private readonly following = new Set<string>();

  constructor() {
    this.snap = this.build();
  }

  // -- for React -----------------------------------------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getSnapshot = (): Snapshot => this.snap;

  private changed(): void {
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.snap = this.build();
      for (const listener of this.listeners) listener();
    }, NOTIFY_MS);
  }

  private build(): Snapshot {
    const counters = probe();
    return {
      status: this.status(),
      active: this.active,
      capturing: this.capture !== undefined,
      stopping: this.stopping,
      voiceStream: this.voiceStream,
      outputRate: this.outputRate,
      lines: this.lines.map((line) => (line.kind === "agent" ? { ...line, tools: [...line.tools] } : { ...line })),
      interim: this.interim,
      metrics: [...this.metrics],
      error: this.error,
      notice: this.notice,
      chunksSent: counters.chunksSent,
      audioBytesReceived: counters.audioBytesReceived,
      audioChunksPlayed: counters.audioChunksPlayed,
    };
  }

  private status(): Status {
    if (this.player?.playing()) return "speaking"; // also after the talk ended: the tail still sounds
    if (!this.active) return "idle";
    if (this.reconnecting) return "reconnecting";
    if (!this.voiceStream) return "connecting";
    // An answer is still being made until its turn ended and its audio (if any comes) is all in.
    const making = [...this.answers.values()].some(
      (answer) =>
        this.following.has(answer.turn) &&
        (!ENDED.has(answer.state) || !(this.audioDone.has(answer.turn) || this.dropped.has(answer.turn))),
    );
    if (this.awaitingTurn || making || this.stopping) return "thinking";
    return "listening";
  }

  // -- commands ------------------------------------------------------------------------------

  /**
   * Readies playback; call it inside the click (or key) that asks for a talk, before any
   * await: browsers keep an audio context made or resumed later, outside the gesture, silent.
   */
  prepare(): void {
    void this.audioContext().resume();
  }

  /** Starts a talk (after prepare(), when something had to be awaited first). */
  async start(options: TalkOptions): Promise<void> {
    if (this.active) return;
    const generation = ++this.generation;
    this.options = options;
    this.active = true;
    this.stopping = false;
    this.reconnecting = false;
    this.voiceStream = "";
    this.streams = 0;
    this.failures = 0;
    this.error = undefined;
    this.notice = "";
    this.awaitingTurn = false;
    this.following.clear();
    this.changed();
    const context = this.audioContext();
    const resumed = context.resume();
    const pusher = new AudioPusher({
      accepted: () => {
        probe().chunksSent += 1;
        this.changed();
      },
      gone: () => undefined, // the event stream ends too, and its reopening re-attaches
      failed: (error) => generation === this.generation && this.fail(error),
      ended: () => this.changed(),
    });
    this.pusher = pusher;
    try {
      await resumed;
      const capture = await startCapture(context, (frame) => pusher.add(frame));
      if (generation !== this.generation) {
        await capture.stop();
        return;
      }
      if (this.stopping) await capture.stop(); // Stop came while the microphone opened
      else this.capture = capture;
    } catch (error) {
      if (generation === this.generation) this.fail(error);
      return;
    }
    this.changed();
    void this.openStream(generation);
  }

  /** Ends the input: the server answers what was said, then ends the stream. */
  async stop(): Promise<void> {
    if (!this.active || this.stopping) return;
    this.stopping = true;
    this.changed();
    const capture = this.capture;
    this.capture = undefined;
    await capture?.stop(); // its last frame reaches the pusher before `last` goes
    this.pusher?.finish();
    this.changed();
  }

  /** Leaves at once: streams cancelled, microphone and playback stopped. */
  hangUp(): void {
    this.generation++;
    this.streamAbort?.abort();
    this.gapAbort?.abort();
    this.pusher?.close();
    this.pusher = undefined;
    void this.capture?.stop();
    this.capture = undefined;
    this.player?.stop();
    this.active = false;
    this.stopping = false;
    this.reconnecting = false;
    this.voiceStream = "";
    this.interim = "";
    this.awaitingTurn = false;
    this.changed();
  }

  /** Forgets the conversation shown (another session was chosen). */
  clear(): void {
    this.lines = [];
    this.metrics = [];
    this.answers.clear();
    this.seen.clear();
    this.lastSequence = 0n;
    this.dropped.clear();
    this.audioDone.clear();
    this.following.clear();
    this.interim = "";
    this.error = undefined;
    this.notice = "";
    this.changed();
  }

  dismissError(): void {
    this.error = undefined;
    this.changed();
  }

  /** The view is gone: everything stops and the audio device is let go. */
  dispose(): void {
    this.hangUp();
    void this.context?.close();
    this.context = undefined;
    this.player = undefined;
  }

  private audioContext(): AudioContext {
    if (!this.context || this.context.state === "closed") {
      this.context = new AudioContext();
      this.player = new Player(this.context, () => this.changed());
    }
    return this.context;
  }

  private fail(error: unknown): void {
    this.hangUp();
    this.error = error;
    this.notice = "";
    this.changed();
  }

  // -- the event stream ----------------------------------------------------------------------

  private async openStream(generation: number): Promise<void> {
    const options = this.options;
    if (!options) return;
    const abort = new AbortController();
    this.streamAbort = abort;
    const reopened = this.streams > 0;
    let failure: unknown = undefined;
    try {
      const events = api.audio.streamVoiceEvents(
        {
          session: options.session,
          config: {
            inputFormat: { encoding: AudioEncoding.LINEAR16, sampleRateHertz: INPUT_RATE, channelCount: 1 },
            // Rate 0: the voice's native rate, named in `started`; the browser resamples.
            outputFormat: { encoding: AudioEncoding.LINEAR16, sampleRateHertz: 0, channelCount: 1 },
            languageCode: options.language,
            voice: options.voice,
            disableBargeIn: !options.bargeIn,
            interimResults: options.interim,
          },
        },
        { signal: abort.signal },
      );
      for await (const response of events) {
        if (generation !== this.generation) return;
        if (response.event) this.onEvent(response.event, generation, reopened);
      }
    } catch (error) {
      if (abort.signal.aborted || generation !== this.generation) return;
      failure = error;
    }
    if (generation !== this.generation) return;
    this.pusher?.detach();
    this.voiceStream = "";
    if (failure === undefined && this.stopping) {
      this.finished(); // the server answered the last utterance and closed: the talk is over
      return;
    }
    if (failure !== undefined && !reopenable(failure)) {
      this.fail(failure);
      return;
    }
    this.failures += 1;
    if (this.failures > MAX_REOPENS) {
      this.fail(failure ?? new Error("the voice stream keeps ending before the talk does"));
      return;
    }
    this.reconnecting = true;
    this.notice = `The voice stream ended${failure ? ` (${summary(failure)})` : ""}; opening a new one, try ${this.failures} of ${MAX_REOPENS}.`;
    this.changed();
    await sleep(Math.min(REOPEN_MAX_MS, REOPEN_BASE_MS * 2 ** (this.failures - 1)));
    if (generation === this.generation) void this.openStream(generation);
  }

  private finished(): void {
    this.pusher = undefined;
    this.active = false;
    this.stopping = false;
    this.interim = "";
    this.changed();
  }

  private onEvent(event: VoiceEvent, generation: number, reopened: boolean): void {
    switch (event.event.case) {
      case "started": {
        this.voiceStream = event.event.value.voiceStream;
        this.outputRate = event.event.value.outputFormat?.sampleRateHertz ?? 0;
        this.streams += 1;
        this.reconnecting = false;
        this.notice = "";
        this.pusher?.attach(this.voiceStream);
        if (reopened) {
          // The audio of turns that ended meanwhile went with the old stream; none will come.
          for (const answer of this.answers.values()) if (ENDED.has(answer.state)) this.audioDone.add(answer.turn);
          const unfinished = [...this.answers.values()].some((answer) => !ENDED.has(answer.state));
          // Only from a known point: replaying from 0 would bring the session's whole past.
          if ((unfinished || this.awaitingTurn) && this.lastSequence > 0n) void this.fillGap(generation);
        }
        break;
      }
      case "voiceActivity":
        // The proto: speech starting stops the agent's playback (barge-in) unless disabled.
        if (event.event.value.kind === VoiceActivity_Kind.SPEECH_STARTED && this.options?.bargeIn) this.bargeIn();
        break;
      case "recognitionResult": {
        const result = event.event.value;
        const text = result.transcript.trim();
        if (!result.isFinal) {
          this.interim = text;
          break;
        }
        this.interim = "";
        if (!text) break; // the server sends nothing on for an empty utterance
        this.lines.push({
          kind: "user",
          key: `${this.streams}:${result.utterance}`,
          text,
          confidence: result.confidence,
        });
        probe().transcripts.push(text);
        this.awaitingTurn = true;
        break;
      }
      case "audioFeatures": {
        const key = `${this.streams}:${event.event.value.utterance}`;
        const line = this.lines.find((l): l is UserLine => l.kind === "user" && l.key === key);
        if (line) line.agitation = event.event.value.agitationScore;
        break;
      }
      case "sessionEvent":
        this.lastTurn = event.event.value.turn;
        this.following.add(this.lastTurn);
        this.onSessionEvent(event.event.value, false);
        break;
      case "synthesizedAudio":
        this.lastTurn = event.event.value.turn;
        this.following.add(this.lastTurn);
        this.onAudio(event.event.value.turn, event.event.value.audio, event.event.value.last, event.event.value.failureReason);
        break;
      case "qualityMetrics": {
        // Sent right after the answer's last audio chunk (or its turn's end when no audio).
        const answer = this.answers.get(this.lastTurn);
        if (answer) this.metrics.push({ turn: answer.turn, number: answer.number, metrics: event.event.value });
        break;
      }
      default:
        break; // a kind this page does not know yet
    }
    if (event.event.case !== "started") this.failures = 0; // the stream works: reopen budget back
    this.changed();
  }

  private bargeIn(): void {
    for (const turn of this.answers.keys()) if (!this.audioDone.has(turn)) this.dropped.add(turn);
    this.player?.stop();
  }

  private onAudio(turn: string, audio: Uint8Array, last: boolean, failureReason: string): void {
    const counters = probe();
    counters.audioBytesReceived += audio.byteLength;
    const answer = this.answers.get(turn);
    if (audio.byteLength > 0 && !this.dropped.has(turn)) {
      if (!this.outputRate) {
        if (answer) answer.audioNote = "the voice stream named no output sample rate, so its audio cannot be played";
      } else if (this.player?.enqueue(turn, audio, this.outputRate)) {
        counters.audioChunksPlayed += 1;
      }
    }
    if (!last) return;
    this.audioDone.add(turn);
    if (failureReason === "INTERRUPTED") {
      this.dropped.add(turn);
      this.player?.stop(turn);
    } else if (failureReason && answer) {
      answer.audioNote = `the answer's audio stopped (${failureReason}); the rest is text only`;
    }
  }

  private onSessionEvent(event: SessionEvent, replayed: boolean): void {
    if (this.seen.has(event.sequence)) return; // the replay and the voice stream overlap
    this.seen.add(event.sequence);
    if (event.sequence > this.lastSequence) this.lastSequence = event.sequence;
    let answer = this.answers.get(event.turn);
    if (!answer) {
      answer = {
        kind: "agent",
        key: event.turn,
        turn: event.turn,
        number: this.answers.size + 1,
        state: Turn_State.UNSPECIFIED,
        reason: "",
        text: "",
        error: "",
        audioNote: "",
        tools: [],
        tokens: 0,
      };
      this.answers.set(event.turn, answer);
      this.lines.push(answer);
      this.awaitingTurn = false;
      // A turn first seen in the replay spoke on the lost stream, if at all: no audio to wait for.
      if (replayed) this.audioDone.add(answer.turn);
    }
    switch (event.event.case) {
      case "turnStateChanged":
        answer.state = event.event.value.state;
        answer.reason = event.event.value.reason;
        if (answer.state === Turn_State.INTERRUPTED) {
          // The proto: after a barge-in the client drops the interrupted turn's queued audio.
          this.dropped.add(answer.turn);
          this.player?.stop(answer.turn);
        }
        break;
      case "tokenDelta":
        answer.tokens += 1;
        break;
      case "toolCallRequested":
        answer.tools.push(event.event.value.tool.split("/").pop() ?? event.event.value.tool);
        break;
      case "finalResponse":
        answer.text = event.event.value.text;
        probe().lastAnswerText = answer.text;
        break;
      case "error":
        answer.error = `${event.event.value.reason}: ${event.event.value.message}`;
        break;
      default:
        break; // the rest (model calls, verdicts, progress) is the Sessions view's to show
    }
  }

  /** After a reopen: the session events of the followed turns that the gap swallowed. */
  private async fillGap(generation: number): Promise<void> {
    const options = this.options;
    if (!options) return;
    this.gapAbort?.abort();
    const abort = new AbortController();
    this.gapAbort = abort;
    const timer = setTimeout(() => abort.abort(), GAP_FILL_MS);
    const after = this.lastSequence;
    let until: bigint | undefined;
    try {
      const replay = api.conversation.streamEvents(
        { session: options.session, afterSequence: after },
        { signal: abort.signal },
      );
      for await (const response of replay) {
        if (generation !== this.generation) break;
        if (response.response.case === "attached") {
          // The stored events end at the session's last_sequence; later ones come live on
          // the new voice stream.
          until = response.response.value.session?.lastSequence ?? after;
          if (until <= after) break;
        } else if (response.response.case === "event") {
          this.onSessionEvent(response.response.value, true);
          this.changed();
          if (until !== undefined && response.response.value.sequence >= until) break;
        }
      }
    } catch (error) {
      if (!abort.signal.aborted && generation === this.generation) {
        this.error = error; // the talk goes on; only the missed text is not shown
        this.changed();
      }
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }
}
