// Dashboards (#/dashboards): the tenant's series from AnalyticsService.QueryMetrics over a
// chosen range (?range=hour|day|week|month): latency percentiles, cost, the policy verdict
// mix and audio quality. Each chart asks for its own series and shows its own state.
import { useMemo, useState } from "react";
import { Aggregation, Metric } from "../gen/skm/analytics/v1/metrics_pb.js";
import { Unavailable } from "../components/Unavailable";
import { tenantName, useClaims } from "../lib/auth";
import { usePaletteActions, type PaletteAction } from "../lib/palette";
import { navigate } from "../lib/router";
import { percent, score, seconds } from "./dashboards/format";
import { CostPanel, MetricLinesPanel, PERCENTILES, VerdictPanel, type LineSpec } from "./dashboards/panels";
import { costWindow, RANGES, rangeSpec, seriesWindow, widthLabel, type RangeId } from "./dashboards/ranges";
import type { ViewProps } from "./types";
import "./dashboards/dashboards.css";

const WER_LINES: LineSpec[] = [
  { aggregation: Aggregation.MEAN, label: "mean", color: "--accent", point: "circle" },
  { aggregation: Aggregation.P95, label: "p95", color: "--bad", dash: [6, 4], point: "triangle" },
];

const MOS_LINES: LineSpec[] = [
  { aggregation: Aggregation.MEAN, label: "mean", color: "--accent", point: "circle" },
  { aggregation: Aggregation.P50, label: "median", color: "--ok", dash: [6, 4], point: "triangle" },
];

function rangeFromQuery(value: string | null): RangeId {
  return RANGES.find((r) => r.id === value)?.id ?? "day";
}

export default function Dashboards({ route }: ViewProps) {
  const parent = tenantName(useClaims());
  const range = rangeFromQuery(route.query.get("range"));
  const [tick, setTick] = useState(0);
  // "Now" is taken when the range is chosen or Refresh is pressed (its deps), so the windows
  // hold still between renders.
  const now = useMemo(() => new Date(), [range, tick]);
  const series = useMemo(() => seriesWindow(range, now), [range, now]);
  const cost = useMemo(() => costWindow(range, now), [range, now]);
  const spec = rangeSpec(range);

  const actions = useMemo<PaletteAction[]>(
    () => [
      { id: "dash-refresh", title: "Refresh dashboards", group: "Dashboards", keywords: "reload charts", run: () => setTick((t) => t + 1) },
      ...RANGES.map((r) => ({
        id: `dash-range-${r.id}`,
        title: `Dashboards: ${r.label.toLowerCase()}`,
        group: "Dashboards",
        keywords: "range time charts",
        run: () => navigate(`/dashboards?range=${r.id}`),
      })),
    ],
    [],
  );
  usePaletteActions("dashboards", actions);

  return (
    <div className="dash-view stack">
      <h1>Dashboards</h1>
      <div className="toolbar">
        <label htmlFor="dash-range">Range</label>
        <select id="dash-range" value={range} onChange={(e) => navigate(`/dashboards?range=${e.target.value}`)}>
          {RANGES.map((r) => (
            <option key={r.id} value={r.id}>
              {r.label}
            </option>
          ))}
        </select>
        <button type="button" className="btn" onClick={() => setTick((t) => t + 1)}>
          Refresh
        </button>
        <span className="muted small">
          {series.start.toLocaleString()} to {series.end.toLocaleString()}, buckets of {widthLabel(series.bucketMs)}
        </span>
      </div>

      <section aria-labelledby="dash-latency" className="stack">
        <h2 id="dash-latency">Latency</h2>
        <div className="dash-grid">
          <MetricLinesPanel
            parent={parent}
            window={series}
            title="Turn latency"
            about="From a turn's start to its end."
            metric={Metric.TURN_LATENCY}
            lines={PERCENTILES}
            format={seconds}
          />
          <MetricLinesPanel
            parent={parent}
            window={series}
            title="Time to first token"
            about="Of PRIMARY model calls."
            metric={Metric.TIME_TO_FIRST_TOKEN}
            lines={PERCENTILES}
            format={seconds}
          />
        </div>
      </section>

      <section aria-labelledby="dash-cost-policy" className="stack">
        <h2 id="dash-cost-policy">Cost and policy</h2>
        <div className="dash-grid">
          <CostPanel parent={parent} window={cost} per={spec.costPer} />
          <VerdictPanel parent={parent} window={series} />
        </div>
      </section>

      <section aria-labelledby="dash-audio" className="stack">
        <h2 id="dash-audio">Audio quality</h2>
        <div className="dash-grid">
          <MetricLinesPanel
            parent={parent}
            window={series}
            title="Voice response latency"
            about="From the end of the user's utterance to the agent's first audio."
            metric={Metric.VOICE_RESPONSE_LATENCY}
            lines={PERCENTILES}
            format={seconds}
          />
          <MetricLinesPanel
            parent={parent}
            window={series}
            title="Word error rate"
            about="Of recognition, where a reference transcript was given."
            metric={Metric.WORD_ERROR_RATE}
            lines={WER_LINES}
            format={percent}
          />
          <MetricLinesPanel
            parent={parent}
            window={series}
            title="Speech quality (MOS)"
            about="Estimated mean opinion score of synthesis, 1 (bad) to 5 (excellent), where an estimator is configured."
            metric={Metric.MEAN_OPINION_SCORE}
            lines={MOS_LINES}
            format={score}
          />
        </div>
        <Unavailable
          what="Real-time factor (RTF)"
          why="AnalyticsService.QueryMetrics has no RTF metric; svc_audio reports it only per exchange, in the QualityMetrics of its own streams."
        />
      </section>
    </div>
  );
}
