// How the agent speaks and listens in the next talk: the voice (AudioService.ListVoices, or
// the session persona's own, shown with its tone from PersonaService.GetPersona), the
// language of the user's speech, interim transcripts and barge-in. A talk keeps the settings
// it started with (they are the voice stream's configuration).
import { useEffect, useState } from "react";
import type { Voice } from "../../gen/skm/audio/v1/voice_pb.js";
import type { Session } from "../../gen/skm/conversation/v1/session_pb.js";
import type { Persona } from "../../gen/skm/profiles/v1/persona_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { allPages } from "../../lib/pages";

export interface Settings {
  voice: string;
  language: string;
  interim: boolean;
  bargeIn: boolean;
}

export const DEFAULT_SETTINGS: Settings = { voice: "", language: "en-US", interim: true, bargeIn: true };

function allVoices(): Promise<Voice[]> {
  return allPages(async (pageToken) => {
    const page = await api.audio.listVoices({ pageSize: 1000, pageToken });
    return { items: page.voices, next: page.nextPageToken };
  });
}

function usePersona(session: Session | undefined): { persona: Persona | undefined; error: unknown } {
  const [state, setState] = useState<{ persona: Persona | undefined; error: unknown }>({ persona: undefined, error: null });
  const name = session?.persona ?? "";
  // The revision the session runs on; built-in personas have none.
  const revision = session?.personaRevisionId ?? "";
  useEffect(() => {
    setState({ persona: undefined, error: null });
    if (!name) return;
    let live = true;
    api.personas
      .getPersona({ name: revision ? `${name}@${revision}` : name })
      .then((reply) => live && setState({ persona: reply.persona, error: null }))
      .catch((error: unknown) => live && setState({ persona: undefined, error }));
    return () => {
      live = false;
    };
  }, [name, revision]);
  return state;
}

export function VoiceSettings({
  session,
  value,
  disabled,
  onChange,
}: {
  session: Session | undefined;
  value: Settings;
  disabled: boolean;
  onChange(next: Settings): void;
}) {
  const [voices, setVoices] = useState<Voice[]>([]);
  const [voicesError, setVoicesError] = useState<unknown>(null);
  const { persona, error: personaError } = usePersona(session);

  useEffect(() => {
    let live = true;
    allVoices()
      .then((list) => live && setVoices(list))
      .catch((error: unknown) => live && setVoicesError(error));
    return () => {
      live = false;
    };
  }, []);

  const personaVoice = persona?.voice ? persona.voice : "";
  const set = (patch: Partial<Settings>) => onChange({ ...value, ...patch });

  return (
    <div className="stack">
      <div className="voice-field">
        <label htmlFor="voice-voice">Voice</label>
        <select
          id="voice-voice"
          value={value.voice}
          disabled={disabled}
          onChange={(event) => set({ voice: event.target.value })}
        >
          <option value="">
            {personaVoice
              ? `The persona's voice (${personaVoice.replace(/^voices\//, "")})`
              : persona
                ? "The persona's voice (the deployment's default)"
                : "The persona's voice"}
          </option>
          {voices.map((voice) => (
            <option key={voice.name} value={voice.name}>
              {voice.displayName || voice.name.replace(/^voices\//, "")} ({voice.engine}, {voice.sampleRateHertz} Hz,{" "}
              {voice.languageCodes.join(", ")})
            </option>
          ))}
        </select>
      </div>
      {persona && (persona.voice || persona.tone) && (
        <dl className="kv small">
          <div>
            <dt>Persona</dt>
            <dd>{persona.displayName || persona.name}</dd>
          </div>
          {persona.voice && (
            <div>
              <dt>Its voice</dt>
              <dd className="mono">{persona.voice}</dd>
            </div>
          )}
          {persona.tone && (
            <div>
              <dt>Its tone</dt>
              <dd>{persona.tone}</dd>
            </div>
          )}
        </dl>
      )}
      {persona && !persona.voice && !persona.tone && (
        <p className="small muted">
          The persona {persona.displayName || persona.name} names no voice or tone: the deployment's default voice
          speaks, in a neutral tone.
        </p>
      )}
      <div className="voice-field">
        <label htmlFor="voice-language">Language of your speech</label>
        <input
          id="voice-language"
          value={value.language}
          disabled={disabled}
          placeholder="empty: detected"
          aria-describedby="voice-language-help"
          onChange={(event) => set({ language: event.target.value.trim() })}
        />
        <span id="voice-language-help" className="small muted">
          BCP-47, e.g. en-US; empty: detected per utterance.
        </span>
      </div>
      <label className="voice-check">
        <input
          type="checkbox"
          checked={value.interim}
          disabled={disabled}
          onChange={(event) => set({ interim: event.target.checked })}
        />
        Interim transcripts
      </label>
      <label className="voice-check">
        <input
          type="checkbox"
          checked={value.bargeIn}
          disabled={disabled}
          onChange={(event) => set({ bargeIn: event.target.checked })}
        />
        Barge-in (speaking stops the agent)
      </label>
      <ErrorBanner error={voicesError} onDismiss={() => setVoicesError(null)} />
      <ErrorBanner error={personaError} />
    </div>
  );
}
