// The controls of the current (newest) turn: Interrupt, Nudge (with optional guidance),
// Resume and Rerun with a larger model. Each is enabled only in the states the API accepts;
// a refusal (e.g. NO_LARGER_MODEL) is shown as the platform stated it.
import { useState } from "react";
import type { Turn } from "../../gen/skm/conversation/v1/turn_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { canInterrupt, canNudge, canRerun, canResume, interruptTurn, nudgeTurn, rerunTurn, resumeTurn } from "./commands";
import type { TurnView } from "./transcript";

export function TurnControls({ turn, onTurn }: { turn: TurnView; onTurn: (turn: Turn | undefined) => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [nudge, setNudge] = useState("");
  const nudgeId = `nudge-${turn.ordinal}`;

  const act = async (work: () => Promise<Turn | undefined>, after?: () => void) => {
    setBusy(true);
    setError(null);
    try {
      onTurn(await work());
      after?.();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="sess-controls" role="group" aria-label="Turn controls">
      <div className="row">
        <button
          type="button"
          className="btn btn-small btn-danger"
          disabled={busy || !canInterrupt(turn.state)}
          onClick={() => void act(() => interruptTurn(turn.name))}
        >
          Interrupt
        </button>
        <button
          type="button"
          className="btn btn-small"
          disabled={busy || !canResume(turn.state)}
          onClick={() => void act(() => resumeTurn(turn.name))}
        >
          Resume
        </button>
        <button
          type="button"
          className="btn btn-small"
          disabled={busy || !canRerun(turn.state)}
          onClick={() => void act(() => rerunTurn(turn.name))}
        >
          Rerun with a larger model
        </button>
      </div>
      <form
        className="row"
        onSubmit={(event) => {
          event.preventDefault();
          void act(() => nudgeTurn(turn.name, nudge), () => setNudge(""));
        }}
      >
        <label htmlFor={nudgeId} className="small">
          Nudge text
        </label>
        <input
          id={nudgeId}
          className="sess-nudge-input"
          value={nudge}
          onChange={(event) => setNudge(event.target.value)}
          placeholder="optional guidance for the retry"
          maxLength={32768}
        />
        <button type="submit" className="btn btn-small" disabled={busy || !canNudge(turn.state)}>
          Nudge
        </button>
      </form>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
    </div>
  );
}
