// What the browser test reads: window.__skmAudio. Only these five keys are created or
// updated (the test may hold the object), and they count from the page's load, not per talk.
export interface SkmAudioProbe {
  /** PushAudio calls the server accepted. */
  chunksSent: number;
  /** Bytes of the agent's synthesized audio received on the event stream. */
  audioBytesReceived: number;
  /** Chunks of that audio scheduled for playback. */
  audioChunksPlayed: number;
  /** The text of the latest final_response. */
  lastAnswerText: string;
  /** Final transcripts of the user's utterances, in order. */
  transcripts: string[];
}

declare global {
  interface Window {
    __skmAudio?: SkmAudioProbe;
  }
}

/** The probe object, made on first use with zeroed keys. */
export function probe(): SkmAudioProbe {
  const found = window.__skmAudio;
  if (found) {
    found.chunksSent ??= 0;
    found.audioBytesReceived ??= 0;
    found.audioChunksPlayed ??= 0;
    found.lastAnswerText ??= "";
    found.transcripts ??= [];
    return found;
  }
  const made: SkmAudioProbe = {
    chunksSent: 0,
    audioBytesReceived: 0,
    audioChunksPlayed: 0,
    lastAnswerText: "",
    transcripts: [],
  };
  window.__skmAudio = made;
  return made;
}
