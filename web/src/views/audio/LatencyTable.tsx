// Per answer, the latencies its quality_metrics carry, all from the end of the user's speech
// (the proto measures the first token from the final transcript; adding the recognition
// latency puts it on the same origin, as `skm voice` does), and what else was measured.
// A dash: not measured for that answer.
import type { QualityMetrics } from "../../gen/skm/audio/v1/audio_metrics_pb.js";
import { durationMs } from "./pcm";
import type { MetricsRow } from "./voiceConsole";

function ms(value: number | undefined): string {
  return value === undefined ? "–" : `${Math.round(value)} ms`;
}

function ratio(value: number | undefined): string {
  return value === undefined ? "–" : value.toFixed(2);
}

function firstToken(metrics: QualityMetrics): number | undefined {
  const token = durationMs(metrics.firstTokenLatency);
  if (token === undefined) return undefined;
  return token + (durationMs(metrics.recognitionLatency) ?? 0);
}

export function LatencyTable({ rows }: { rows: MetricsRow[] }) {
  if (rows.length === 0) {
    return <p className="muted small">No answer measured yet: each spoken answer adds a row.</p>;
  }
  const mos = rows.some((row) => row.metrics.meanOpinionScore !== undefined);
  return (
    <div className="voice-table-wrap">
      <table className="table voice-latency">
        <caption className="small muted">
          Per answer: the first three from the end of your speech; synthesis from its own start
        </caption>
        <thead>
          <tr>
            <th scope="col">Answer</th>
            <th scope="col">Speech end → final transcript</th>
            <th scope="col">→ first token</th>
            <th scope="col">→ first audio</th>
            <th scope="col">Synthesis → first audio</th>
            <th scope="col">Spoken</th>
            <th scope="col">Recognition RTF</th>
            <th scope="col">Synthesis RTF</th>
            {mos && <th scope="col">MOS</th>}
          </tr>
        </thead>
        <tbody>
          {rows.map((row, index) => (
            <tr key={`${row.turn}-${index}`}>
              <th scope="row">{row.number}</th>
              <td>{ms(durationMs(row.metrics.recognitionLatency))}</td>
              <td>{ms(firstToken(row.metrics))}</td>
              <td>{ms(durationMs(row.metrics.responseLatency))}</td>
              <td>{ms(durationMs(row.metrics.synthesisLatency))}</td>
              <td>
                {row.metrics.synthesizedDuration
                  ? `${((durationMs(row.metrics.synthesizedDuration) ?? 0) / 1000).toFixed(1)} s`
                  : "–"}
              </td>
              <td>{ratio(row.metrics.recognitionRealTimeFactor)}</td>
              <td>{ratio(row.metrics.synthesisRealTimeFactor)}</td>
              {mos && <td>{ratio(row.metrics.meanOpinionScore)}</td>}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
