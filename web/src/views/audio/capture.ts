// The microphone: getUserMedia with echo cancellation (so the agent's own voice from the
// speakers does not barge in on itself), through the pcm-capture worklet
// (web/public/pcm-capture-worklet.js), which posts 16 kHz LINEAR16 frames of 20 ms.
import { FRAME_BYTES, INPUT_RATE } from "./pcm";

const WORKLET_URL = "/pcm-capture-worklet.js";
// How long stop() waits for the worklet's last partial frame before letting go anyway.
const FLUSH_WAIT_MS = 500;

export interface Capture {
  /** Ends the recording; resolves once the last (shorter) frame has been handed over. */
  stop(): Promise<void>;
}

// addModule once per context: a second call would register the processor twice.
const loaded = new WeakMap<BaseAudioContext, Promise<void>>();

function loadWorklet(context: AudioContext): Promise<void> {
  let loading = loaded.get(context);
  if (!loading) {
    loading = context.audioWorklet.addModule(WORKLET_URL);
    loaded.set(context, loading);
    loading.catch(() => loaded.delete(context));
  }
  return loading;
}

/** Starts recording into `onFrame`; rejects when there is no microphone or no permission. */
export async function startCapture(context: AudioContext, onFrame: (pcm: Uint8Array) => void): Promise<Capture> {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this page has no microphone access (getUserMedia needs https or localhost)");
  }
  if (!context.audioWorklet) throw new Error("this browser has no AudioWorklet, which the capture needs");
  const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  try {
    await loadWorklet(context);
    const source = context.createMediaStreamSource(media);
    const tap = new AudioWorkletNode(context, "pcm-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { targetRate: INPUT_RATE, chunkMs: (FRAME_BYTES / 2 / INPUT_RATE) * 1000 },
    });
    // The tap writes nothing; it is wired to the output through a muted gain only so that
    // the graph pulls it (a node nobody listens to may not be processed).
    const mute = context.createGain();
    mute.gain.value = 0;
    source.connect(tap).connect(mute).connect(context.destination);

    let flushed: () => void = () => undefined;
    const done = new Promise<void>((resolve) => (flushed = resolve));
    tap.port.onmessage = (event: MessageEvent<unknown>) => {
      if (event.data instanceof ArrayBuffer) onFrame(new Uint8Array(event.data));
      else flushed(); // { type: "stopped" }
    };
    let stopping: Promise<void> | undefined;
    return {
      stop() {
        stopping ??= (async () => {
          tap.port.postMessage("stop");
          await Promise.race([done, new Promise((resolve) => setTimeout(resolve, FLUSH_WAIT_MS))]);
          tap.port.onmessage = null;
          source.disconnect();
          tap.disconnect();
          mute.disconnect();
          for (const track of media.getTracks()) track.stop();
        })();
        return stopping;
      },
    };
  } catch (error) {
    for (const track of media.getTracks()) track.stop();
    throw error;
  }
}
