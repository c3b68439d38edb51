// What the scoring job said last: its recommendation per role (and profile) and the scores
// behind it. Shown exactly as stored; with none, the job has not run for this tenant.
import type { Model } from "../../gen/skm/profiles/v1/model_pb.js";
import type { ModelRecommendation, ModelScore } from "../../gen/skm/profiles/v1/model_score_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import type { Loaded } from "./data";
import {
  formatChange,
  formatDuration,
  formatMoney,
  formatRatio,
  formatTime,
  modelTitle,
  roleTitle,
} from "./format";

function profileLabel(name: string): string {
  return name ? name.replace(/^.*\/modelProfiles\//, "") : "deployment default";
}

export function Recommendations({ recs, models }: { recs: Loaded<ModelRecommendation[]>; models: Model[] | undefined }) {
  const items = recs.data ?? [];
  return (
    <section className="card stack" aria-labelledby="models-recs">
      <h2 id="models-recs">Recommendations</h2>
      {recs.loading && !recs.data && (
        <p className="muted" role="status">
          Loading recommendations…
        </p>
      )}
      <ErrorBanner error={recs.error} />
      {recs.data && items.length === 0 && (
        <p>
          No recommendations yet <span className="muted">(the scoring job has not run for this tenant).</span>
        </p>
      )}
      {items.length > 0 && (
        <div className="models-scroll">
          <table className="table">
            <thead>
              <tr>
                <th scope="col">Role</th>
                <th scope="col">Profile</th>
                <th scope="col">Current</th>
                <th scope="col">Recommended</th>
                <th scope="col">Score change</th>
                <th scope="col">Cost change</th>
                <th scope="col">Applied</th>
                <th scope="col">Made</th>
              </tr>
            </thead>
            <tbody>
              {items.map((r) => (
                <tr key={`${r.role}|${r.modelProfile}`}>
                  <td>{roleTitle(r.role)}</td>
                  <td>{profileLabel(r.modelProfile)}</td>
                  <td>{r.currentModel ? modelTitle(r.currentModel, models) : "none"}</td>
                  <td>
                    {modelTitle(r.recommendedModel, models)}
                    <div className="muted small">{r.summary}</div>
                  </td>
                  <td>{formatChange(r.scoreChange)}</td>
                  <td>{formatChange(r.costChange)}</td>
                  <td>
                    {r.applied ? (
                      <span className="badge badge-allow">applied</span>
                    ) : (
                      <>
                        <span className="badge badge-info">not applied</span>{" "}
                        <span className="muted small">{r.notAppliedReason}</span>
                      </>
                    )}
                  </td>
                  <td className="small">{formatTime(r.createTime)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

export function Scores({ scores, models }: { scores: Loaded<ModelScore[]>; models: Model[] | undefined }) {
  const items = scores.data ?? [];
  return (
    <section className="card stack" aria-labelledby="models-scores">
      <h2 id="models-scores">Model scores</h2>
      <p className="muted small">
        The scoring job's latest score of each model per role, best first: a weighted sum of quality, 1/cost,
        1/latency and reliability, in [0, 1].
      </p>
      {scores.loading && !scores.data && (
        <p className="muted" role="status">
          Loading scores…
        </p>
      )}
      <ErrorBanner error={scores.error} />
      {scores.data && items.length === 0 && <p>No scores yet.</p>}
      {items.length > 0 && (
        <details>
          <summary>Scores of {items.length} model and role pairs</summary>
          <div className="models-scroll">
            <table className="table small">
              <thead>
                <tr>
                  <th scope="col">Role</th>
                  <th scope="col">Model</th>
                  <th scope="col">Score</th>
                  <th scope="col">Quality</th>
                  <th scope="col">Cost per M tokens</th>
                  <th scope="col">Latency</th>
                  <th scope="col">Reliability</th>
                  <th scope="col">Samples</th>
                  <th scope="col">Window end</th>
                </tr>
              </thead>
              <tbody>
                {items.map((s) => (
                  <tr key={`${s.role}|${s.model}`}>
                    <td>{roleTitle(s.role)}</td>
                    <td>{modelTitle(s.model, models)}</td>
                    <td>{s.score.toFixed(3)}</td>
                    <td>{formatRatio(s.quality)}</td>
                    <td>{formatMoney(s.costPerMillionTokens)}</td>
                    <td>{s.latency ? formatDuration(s.latency) : "no data"}</td>
                    <td>{formatRatio(s.reliability)}</td>
                    <td>{Number(s.sampleCount).toLocaleString()}</td>
                    <td>{formatTime(s.windowEndTime)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </details>
      )}
    </section>
  );
}
