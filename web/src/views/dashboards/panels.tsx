// The dashboards' charts, each a card with its own QueryMetrics call and its loading, empty
// ("No data in this range") and error states. Only what svc_analytics returns is drawn.
import { useId, useMemo, type ReactNode } from "react";
import { Aggregation, Dimension, Metric, type TimeSeries } from "../../gen/skm/analytics/v1/metrics_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { count, money, shortModel } from "./format";
import { bucketLabel, bucketStarts, type Window } from "./ranges";
import { TimeChart, type ChartLine } from "./TimeChart";
import { hasPoints, samplesOn, useMetrics, valuesOn, type MetricsState } from "./useMetrics";

interface PanelProps {
  parent: string;
  window: Window;
}

/** Distinct colours for series that have no meaning of their own (models); dark and light. */
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

function ChartCard(props: { title: string; about?: ReactNode; state: MetricsState; empty: boolean; children: ReactNode }) {
  const { title, about, state, empty, children } = props;
  const id = useId();
  const status = state.loading ? "Loading…" : !state.error && empty ? "No data in this range" : "";
  return (
    <section className="card dash-card" aria-labelledby={id} aria-busy={state.loading}>
      <h3 id={id}>{title}</h3>
      {about && <p className="muted small">{about}</p>}
      <p className={empty && !state.loading ? "dash-empty" : "muted small"} role="status">
        {status}
      </p>
      <ErrorBanner error={state.error} />
      {!state.loading && !state.error && !empty && children}
    </section>
  );
}

/** The window's bucket starts and their axis labels. */
function useBuckets(window: Window): { starts: number[]; labels: string[] } {
  return useMemo(() => {
    const starts = bucketStarts(window);
    return { starts, labels: starts.map((t) => bucketLabel(t, window)) };
  }, [window]);
}

export interface LineSpec {
  aggregation: Aggregation;
  label: string;
  color: string;
  dash?: number[];
  point?: "circle" | "triangle" | "rect";
}

/** p50 solid, p95 dashed, p99 dotted, each its own marker: told apart by more than colour. */
export const PERCENTILES: LineSpec[] = [
  { aggregation: Aggregation.P50, label: "p50", color: "--accent", point: "circle" },
  { aggregation: Aggregation.P95, label: "p95", color: "--warn", dash: [6, 4], point: "triangle" },
  { aggregation: Aggregation.P99, label: "p99", color: "--bad", dash: [2, 3], point: "rect" },
];

/** One metric, one line per aggregation. */
export function MetricLinesPanel(
  props: PanelProps & { title: string; about?: ReactNode; metric: Metric; lines: LineSpec[]; format(v: number): string },
) {
  const { parent, window, title, about, metric, lines, format } = props;
  const queries = lines.map((l) => ({ metric, aggregation: l.aggregation }));
  const state = useMetrics(parent, queries, window);
  const { starts, labels } = useBuckets(window);
  const chartLines = useMemo<ChartLine[]>(
    () =>
      lines.map((spec) => {
        const found = state.series?.find((s) => s.metric === metric && s.aggregation === spec.aggregation);
        return { ...spec, values: found ? valuesOn(found, starts) : starts.map(() => null) };
      }),
    [lines, metric, state.series, starts],
  );
  return (
    <ChartCard title={title} about={about} state={state} empty={!hasPoints(state.series)}>
      <TimeChart kind="line" title={title} labels={labels} lines={chartLines} format={format} />
    </ChartCard>
  );
}

/** Model cost per bucket, stacked by model, one stack per currency (never summed across). */
export function CostPanel({ parent, window, per }: PanelProps & { per: string }) {
  const state = useMetrics(parent, [{ metric: Metric.MODEL_COST, aggregation: Aggregation.SUM }], window, [Dimension.MODEL]);
  const { starts, labels } = useBuckets(window);
  const withData = useMemo(() => (state.series ?? []).filter((s) => s.points.length > 0), [state.series]);
  const currencies = useMemo(() => [...new Set(withData.map((s) => s.unit))], [withData]);
  const lines = useMemo<ChartLine[]>(
    () =>
      withData.map((s, i) => ({
        label: `${s.model ? shortModel(s.model) : "all models"}${currencies.length > 1 ? ` (${s.unit})` : ""}`,
        values: valuesOn(s, starts),
        color: PALETTE[i % PALETTE.length],
        stack: s.unit,
      })),
    [withData, currencies, starts],
  );
  const format = useMemo(
    () => (currencies.length === 1 ? (v: number) => money(v, currencies[0]) : (v: number) => money(v, "")),
    [currencies],
  );
  const totals = currencies.map((currency) => ({
    currency,
    amount: withData
      .filter((s) => s.unit === currency)
      .flatMap((s) => s.points)
      .reduce((sum, p) => sum + p.value, 0),
  }));
  const title = `Cost per ${per}`;
  return (
    <ChartCard
      title={title}
      about={`Cost of model calls by model${per === "day" ? " (UTC days)" : ""}, priced with each model's registered cost.`}
      state={state}
      empty={withData.length === 0}
    >
      <p className="small">
        Total in this range: {totals.map((t) => money(t.amount, t.currency)).join(", ")}
      </p>
      <TimeChart kind="bar" stacked title={title} labels={labels} lines={lines} format={format} />
    </ChartCard>
  );
}

function pointsCount(series: TimeSeries | undefined): number {
  return (series?.points ?? []).reduce((sum, p) => sum + Number(p.sampleCount), 0);
}

/**
 * Allow / deny / held per bucket. The contract gives the shares of decisions that were DENY
 * and REQUIRES_APPROVAL with the decisions counted; a verdict is one of the three, so the
 * allowed ones are the rest. Counts are rate x decisions, rounded.
 */
export function VerdictPanel({ parent, window }: PanelProps) {
  const state = useMetrics(
    parent,
    [
      { metric: Metric.POLICY_DENY_RATE, aggregation: Aggregation.MEAN },
      { metric: Metric.POLICY_APPROVAL_RATE, aggregation: Aggregation.MEAN },
    ],
    window,
  );
  const { starts, labels } = useBuckets(window);
  const deny = state.series?.find((s) => s.metric === Metric.POLICY_DENY_RATE);
  const held = state.series?.find((s) => s.metric === Metric.POLICY_APPROVAL_RATE);
  const lines = useMemo<ChartLine[]>(() => {
    const nDeny = samplesOn(deny, starts);
    const nHeld = samplesOn(held, starts);
    const denyRate = deny ? valuesOn(deny, starts) : [];
    const heldRate = held ? valuesOn(held, starts) : [];
    const decisions = starts.map((_, i) => Math.max(nDeny[i], nHeld[i]));
    const denied = decisions.map((n, i) => (n ? Math.round((denyRate[i] ?? 0) * n) : null));
    const heldCount = decisions.map((n, i) => (n ? Math.round((heldRate[i] ?? 0) * n) : null));
    const allowed = decisions.map((n, i) => (n ? Math.max(0, n - (denied[i] ?? 0) - (heldCount[i] ?? 0)) : null));
    return [
      { label: "allow", values: allowed, color: "--ok", stack: "verdicts" },
      { label: "deny", values: denied, color: "--bad", stack: "verdicts" },
      { label: "held", values: heldCount, color: "--warn", stack: "verdicts" },
    ];
  }, [deny, held, starts]);
  const sum = (values: (number | null)[]) => values.reduce<number>((total, v) => total + (v ?? 0), 0);
  const [allowTotal, denyTotal, heldTotal] = lines.map((l) => sum(l.values));
  const empty = pointsCount(deny) === 0 && pointsCount(held) === 0;
  return (
    <ChartCard
      title="Verdict mix"
      about="Policy decisions per bucket: denied and held (requires approval) from svc_analytics' deny and approval rates, allowed the rest."
      state={state}
      empty={empty}
    >
      <p className="small">
        In this range: <span className="badge badge-allow">allow {count(allowTotal)}</span>{" "}
        <span className="badge badge-deny">deny {count(denyTotal)}</span>{" "}
        <span className="badge badge-held">held {count(heldTotal)}</span>
      </p>
      <TimeChart kind="bar" stacked title="Verdict mix" labels={labels} lines={lines} format={count} />
    </ChartCard>
  );
}
