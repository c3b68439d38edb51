// The voice console (#/audio): talk with a session's agent through the microphone and hear
// its answers, over the browser pair of AudioService (StreamVoiceEvents + PushAudio; the
// engine is audio/voiceConsole.ts). Shows the live transcripts, the agent's turns, the
// per-answer latencies and a status line; "Start talking" / "Stop talking" are also palette
// actions. `#/audio?session=ID` opens on that session.
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import type { Session } from "../gen/skm/conversation/v1/session_pb.js";
import { ErrorBanner } from "../components/ErrorBanner";
import { Unavailable } from "../components/Unavailable";
import { tenantName, useClaims } from "../lib/auth";
import { usePaletteActions, type PaletteAction } from "../lib/palette";
import { navigate } from "../lib/router";
import { ConversationLog } from "./audio/ConversationLog";
import { LatencyTable } from "./audio/LatencyTable";
import { probe } from "./audio/probe";
import { SessionPicker, useSessionChoice } from "./audio/SessionPicker";
import { VoiceConsole, type Snapshot } from "./audio/voiceConsole";
import { DEFAULT_SETTINGS, VoiceSettings, type Settings } from "./audio/VoiceSettings";
import type { ViewProps } from "./types";
import "./audio/audio.css";

/** Why this browser cannot run the console, or "" when it can. */
function missingSupport(): string {
  if (!window.isSecureContext) return "the microphone needs a secure page (https, or http on localhost).";
  if (!navigator.mediaDevices?.getUserMedia) return "this browser offers no microphone access (getUserMedia).";
  if (typeof AudioWorkletNode === "undefined") return "this browser has no AudioWorklet, which the capture uses.";
  return "";
}

function Controls({
  snap,
  canStart,
  onStart,
  onStop,
  onHangUp,
}: {
  snap: Snapshot;
  canStart: boolean;
  onStart(): void;
  onStop(): void;
  onHangUp(): void;
}) {
  return (
    <div className="toolbar voice-controls">
      <button type="button" className="btn btn-primary" disabled={!canStart || snap.active} onClick={onStart}>
        Start talking
      </button>
      <button type="button" className="btn btn-danger" disabled={!snap.active || snap.stopping} onClick={onStop}>
        Stop
      </button>
      {snap.active && (
        <button type="button" className="btn btn-small" onClick={onHangUp}>
          Hang up now
        </button>
      )}
      <p className="voice-status">
        <span className="muted">Status </span>
        <strong role="status" aria-live="polite" data-status={snap.status} className={`voice-state voice-${snap.status}`}>
          {snap.status}
        </strong>
      </p>
    </div>
  );
}

function StreamFacts({ snap }: { snap: Snapshot }) {
  return (
    <details className="small">
      <summary>Stream details</summary>
      <dl className="kv">
        <div>
          <dt>Voice stream</dt>
          <dd className="mono">{snap.voiceStream || "none open"}</dd>
        </div>
        <div>
          <dt>Your audio</dt>
          <dd>LINEAR16, 16000 Hz mono; {snap.chunksSent} PushAudio calls accepted</dd>
        </div>
        <div>
          <dt>Agent's audio</dt>
          <dd>
            {snap.outputRate ? `LINEAR16, ${snap.outputRate} Hz mono; ` : ""}
            {snap.audioBytesReceived} bytes received, {snap.audioChunksPlayed} chunks played
          </dd>
        </div>
      </dl>
    </details>
  );
}

export default function Audio({ route }: ViewProps) {
  const claims = useClaims();
  const parent = tenantName(claims);
  const [engine] = useState(() => new VoiceConsole());
  const snap = useSyncExternalStore(engine.subscribe, engine.getSnapshot);
  const [session, setSession] = useState<Session | undefined>(undefined);
  const [settings, setSettings] = useState<Settings>(DEFAULT_SETTINGS);
  const unsupported = useMemo(missingSupport, []);
  const wanted = route.query.get("session") ?? "";

  useEffect(() => {
    probe(); // the test's counters exist from the view's first render
    return () => engine.dispose();
  }, [engine]);

  const shown = useRef("");
  const select = useCallback(
    (next: Session) => {
      if (shown.current !== next.name) engine.clear(); // the log belongs to one session
      shown.current = next.name;
      setSession(next);
      const id = next.name.split("/").pop() ?? "";
      if (id) navigate(`/audio?session=${encodeURIComponent(id)}`);
    },
    [engine],
  );

  const choice = useSessionChoice(parent, wanted, select);

  const start = useCallback(async () => {
    if (engine.getSnapshot().active) throw new Error("a talk is already on: Stop it first");
    engine.prepare(); // still inside the gesture
    const talkIn = session ?? (await choice.create()); // none chosen: a new one
    await engine.start({ session: talkIn.name, ...settings });
  }, [engine, session, settings, choice]);

  const stop = useCallback(async () => {
    if (!engine.getSnapshot().active) throw new Error("no talk is on");
    await engine.stop();
  }, [engine]);

  const actions = useMemo<PaletteAction[]>(
    () => [
      { id: "audio-start", title: "Start talking", group: "Voice", keywords: "microphone speak talk listen", run: start },
      { id: "audio-stop", title: "Stop talking", group: "Voice", keywords: "microphone end finish", run: stop },
    ],
    [start, stop],
  );
  usePaletteActions("audio", actions);

  if (unsupported) {
    return (
      <section>
        <h1>Voice</h1>
        <Unavailable what="The voice console" why={unsupported} />
      </section>
    );
  }

  return (
    <section className="voice">
      <h1>Voice</h1>
      <div className="split">
        <div className="card stack">
          <h2>Setup</h2>
          <SessionPicker choice={choice} selected={session} disabled={snap.active} onSelect={select} />
          <VoiceSettings session={session} value={settings} disabled={snap.active} onChange={setSettings} />
          {snap.active && <p className="small muted">These apply from the next talk.</p>}
        </div>
        <div className="stack voice-main">
          <div className="card stack">
            <Controls
              snap={snap}
              canStart={!choice.creating}
              onStart={() => void start().catch(() => undefined)}
              onStop={() => void stop().catch(() => undefined)}
              onHangUp={() => engine.hangUp()}
            />
            {snap.notice && (
              <p className="small voice-notice" aria-live="polite">
                {snap.notice}
              </p>
            )}
            <ErrorBanner error={snap.error} onDismiss={() => engine.dismissError()} />
            <StreamFacts snap={snap} />
          </div>
          <div className="card">
            <h2>Conversation</h2>
            <ConversationLog lines={snap.lines} interim={snap.interim} />
          </div>
          <div className="card">
            <h2>Latency per answer</h2>
            <LatencyTable rows={snap.metrics} />
          </div>
        </div>
      </div>
    </section>
  );
}
