// The voice console's microphone tap (an AudioWorkletProcessor, loaded by
// web/src/views/audio/capture.ts): whatever rate the AudioContext runs at, it hands the main
// thread 16 kHz mono signed 16-bit little-endian PCM, 20 ms (640 bytes) per message, the
// frame AudioService expects (skm/type/v1/audio_format.proto).
//
// Downsampling: a windowed-sinc low-pass at the input rate (so nothing above the new Nyquist
// folds back into the speech band), read at fractional input positions with linear
// interpolation; works for 48 kHz, 44.1 kHz and any other context rate, and is a no-op at
// 16 kHz. The filter is evaluated only where an output sample falls, not for every input
// sample.
//
// Messages in: "stop" (post what is left as a last, shorter chunk, then end). Messages out:
// ArrayBuffer chunks, then { type: "stopped" } once.

const RING = 8192; // input samples kept (a power of two, far more than the filter needs)
const MASK = RING - 1;
const SILENCE = new Float32Array(128); // one render quantum

class PcmCaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const wanted = options && options.processorOptions ? options.processorOptions : {};
    const targetRate = wanted.targetRate || 16000;
    const chunkMs = wanted.chunkMs || 20;
    // `sampleRate` is the context's rate, a global of the worklet scope.
    this.step = sampleRate / targetRate; // input samples per output sample
    this.kernel = lowPass(this.step);
    this.half = (this.kernel.length - 1) / 2;
    this.ring = new Float32Array(RING);
    this.received = 0; // input samples seen so far
    this.position = 0; // input position (in samples, fractional) of the next output sample
    this.chunk = new DataView(new ArrayBuffer(Math.round((targetRate * chunkMs) / 1000) * 2));
    this.filled = 0; // bytes of `chunk` written
    this.stopping = false;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.stopping = true;
    };
  }

  process(inputs) {
    if (this.stopping) {
      if (this.filled > 0) this.post(this.filled);
      this.port.postMessage({ type: "stopped" });
      return false;
    }
    const input = inputs[0];
    // No channel means no sound from the track (ended, muted, a fake device at the end of its
    // file): it counts as silence, so the frames keep their pace and the server hears the
    // pause rather than nothing (which it would end the stream for, STREAM_IDLE).
    this.take(input && input.length > 0 && input[0] ? input : [SILENCE]);
    this.emit();
    return true;
  }

  /** Appends one render quantum, channels averaged into one (the node asks for mono anyway). */
  take(channels) {
    const frames = channels[0].length;
    const count = channels.length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < count; c++) sum += channels[c][i];
      this.ring[(this.received + i) & MASK] = sum / count;
    }
    this.received += frames;
  }

  /** Writes every output sample whose filter window has fully arrived. */
  emit() {
    while (Math.floor(this.position) + 1 + this.half < this.received) {
      const index = Math.floor(this.position);
      const frac = this.position - index;
      const value = this.filtered(index) * (1 - frac) + (frac > 0 ? this.filtered(index + 1) * frac : 0);
      const clipped = Math.max(-1, Math.min(1, value));
      this.chunk.setInt16(this.filled, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
      this.filled += 2;
      if (this.filled === this.chunk.byteLength) this.post(this.filled);
      this.position += this.step;
    }
  }

  /** The low-passed input at integer position n (samples before the first one count as 0). */
  filtered(n) {
    const kernel = this.kernel;
    let sum = 0;
    for (let k = 0; k < kernel.length; k++) {
      const at = n + this.half - k;
      if (at >= 0) sum += kernel[k] * this.ring[at & MASK];
    }
    return sum;
  }

  post(bytes) {
    const out = this.chunk.buffer.slice(0, bytes);
    this.port.postMessage(out, [out]);
    this.filled = 0;
  }
}

/**
 * A Blackman-windowed sinc low-pass for decimating by `step`, cut at 90% of the output
 * Nyquist; a single tap (no filtering) when the rate does not go down.
 */
function lowPass(step) {
  if (step <= 1) return new Float32Array([1]);
  const cutoff = (0.5 / step) * 0.9; // cycles per input sample
  const taps = 2 * Math.ceil(4 * step) + 1; // odd, longer for steeper decimation
  const half = (taps - 1) / 2;
  const kernel = new Float32Array(taps);
  let total = 0;
  for (let k = 0; k < taps; k++) {
    const x = k - half;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * k) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * k) / (taps - 1));
    kernel[k] = sinc * window;
    total += kernel[k];
  }
  for (let k = 0; k < taps; k++) kernel[k] /= total; // unity gain at DC
  return kernel;
}

registerProcessor("pcm-capture", PcmCaptureProcessor);
