// An error as the platform stated it: reason, code, message, and field violations.
import { describe } from "../lib/errors";

export function ErrorBanner({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  if (error === null || error === undefined) return null;
  const problem = describe(error);
  return (
    <div className="error-banner" role="alert">
      <strong>{problem.reason || problem.code}</strong>
      {problem.reason && <span className="muted"> ({problem.code})</span>}
      <span>: {problem.message}</span>
      {problem.fieldViolations.length > 0 && (
        <ul>
          {problem.fieldViolations.map((v) => (
            <li key={v.field}>
              <code>{v.field}</code>: {v.description}
            </li>
          ))}
        </ul>
      )}
      {Object.keys(problem.metadata).length > 0 && (
        <details>
          <summary>details</summary>
          <dl className="kv">
            {Object.entries(problem.metadata).map(([k, v]) => (
              <div key={k}>
                <dt>{k}</dt>
                <dd>{v}</dd>
              </div>
            ))}
          </dl>
        </details>
      )}
      {onDismiss && (
        <button type="button" className="btn btn-small" onClick={onDismiss} aria-label="Dismiss error">
          ×
        </button>
      )}
    </div>
  );
}
