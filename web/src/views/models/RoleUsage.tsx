// A role's usage, from svc_analytics: the last 24 hours of its model calls (QueryMetrics,
// one bucket spanning the window) and this month's spend (GetModelSpend). Both need the
// operator permission; a refusal is shown as the platform said it.
import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Aggregation, Metric, type TimeSeries } from "../../gen/skm/analytics/v1/metrics_pb.js";
import { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { useLoad } from "./data";
import { formatAmount, formatMoney, formatRatio, formatSeconds } from "./format";

const WINDOW_MS = 24 * 60 * 60 * 1000;

interface Usage {
  calls: number;
  tokens: number | undefined;
  costs: { currency: string; amount: number }[];
  ttftP50: number | undefined;
  ttftP95: number | undefined;
  tokensPerSecondP50: number | undefined;
  failureRate: number | undefined;
  fallbackRate: number | undefined;
}

function pick(series: TimeSeries[], metric: Metric, aggregation: Aggregation): TimeSeries[] {
  return series.filter((s) => s.metric === metric && s.aggregation === aggregation);
}

/** The window is one bucket, so each series has at most one point: its value is the answer. */
function single(series: TimeSeries[], metric: Metric, aggregation: Aggregation): number | undefined {
  const points = pick(series, metric, aggregation).flatMap((s) => s.points);
  return points.length === 1 ? points[0].value : undefined;
}

async function loadUsage(parent: string, role: ModelRole, signal: AbortSignal): Promise<Usage> {
  const end = new Date();
  const start = new Date(end.getTime() - WINDOW_MS);
  const queries = [
    { metric: Metric.TOKENS, aggregation: Aggregation.SUM },
    { metric: Metric.MODEL_COST, aggregation: Aggregation.SUM },
    { metric: Metric.TOKENS_PER_SECOND, aggregation: Aggregation.P50 },
    { metric: Metric.MODEL_FAILURE_RATE, aggregation: Aggregation.MEAN },
    { metric: Metric.MODEL_FALLBACK_RATE, aggregation: Aggregation.MEAN },
  ];
  // The contract measures time to first token for PRIMARY calls only.
  if (role === ModelRole.PRIMARY) {
    queries.push(
      { metric: Metric.TIME_TO_FIRST_TOKEN, aggregation: Aggregation.P50 },
      { metric: Metric.TIME_TO_FIRST_TOKEN, aggregation: Aggregation.P95 },
    );
  }
  const reply = await api.analytics.queryMetrics(
    {
      parent,
      queries,
      roles: [role],
      startTime: timestampFromDate(start),
      endTime: timestampFromDate(end),
      bucketWidth: durationFromMs(WINDOW_MS),
    },
    { signal },
  );
  const series = reply.series;
  // Every model call is in the failure rate's denominator: its sample count is the calls.
  const calls = pick(series, Metric.MODEL_FAILURE_RATE, Aggregation.MEAN)
    .flatMap((s) => s.points)
    .reduce((sum, p) => sum + Number(p.sampleCount), 0);
  const tokenPoints = pick(series, Metric.TOKENS, Aggregation.SUM).flatMap((s) => s.points);
  return {
    calls,
    tokens: tokenPoints.length ? tokenPoints.reduce((sum, p) => sum + p.value, 0) : undefined,
    costs: pick(series, Metric.MODEL_COST, Aggregation.SUM)
      .filter((s) => s.points.length > 0)
      .map((s) => ({ currency: s.unit, amount: s.points.reduce((sum, p) => sum + p.value, 0) })),
    ttftP50: single(series, Metric.TIME_TO_FIRST_TOKEN, Aggregation.P50),
    ttftP95: single(series, Metric.TIME_TO_FIRST_TOKEN, Aggregation.P95),
    tokensPerSecondP50: single(series, Metric.TOKENS_PER_SECOND, Aggregation.P50),
    failureRate: single(series, Metric.MODEL_FAILURE_RATE, Aggregation.MEAN),
    fallbackRate: single(series, Metric.MODEL_FALLBACK_RATE, Aggregation.MEAN),
  };
}

function Row({ term, value }: { term: string; value: string }) {
  return (
    <div>
      <dt>{term}</dt>
      <dd>{value}</dd>
    </div>
  );
}

export function RoleUsage({ parent, role, refresh }: { parent: string; role: ModelRole; refresh: number }) {
  const usage = useLoad((signal) => loadUsage(parent, role, signal), [parent, role, refresh]);
  const spend = useLoad(
    (signal) => api.analytics.getModelSpend({ tenant: parent, role }, { signal }),
    [parent, role, refresh],
  );
  const u = usage.data;

  return (
    <div className="models-usage">
      <h3>Usage</h3>
      <p className="muted small">Last 24 hours, every mode (analytics does not split usage by mode).</p>
      {usage.loading && !u && (
        <p className="muted small" role="status">
          Loading usage…
        </p>
      )}
      <ErrorBanner error={usage.error} />
      {u && u.calls === 0 && <p className="muted small">No model calls for this role in the last 24 hours.</p>}
      {u && u.calls > 0 && (
        <dl className="kv small" aria-label="Usage in the last 24 hours">
          <Row term="Model calls (24 h)" value={u.calls.toLocaleString()} />
          {u.tokens !== undefined && <Row term="Tokens (24 h)" value={u.tokens.toLocaleString()} />}
          {u.costs.map((c) => (
            <Row key={c.currency} term={`Cost (24 h, ${c.currency || "no currency"})`} value={formatAmount(c.amount, c.currency)} />
          ))}
          {u.ttftP50 !== undefined && <Row term="Time to first token p50" value={formatSeconds(u.ttftP50)} />}
          {u.ttftP95 !== undefined && <Row term="Time to first token p95" value={formatSeconds(u.ttftP95)} />}
          {u.tokensPerSecondP50 !== undefined && (
            <Row term="Tokens per second p50" value={u.tokensPerSecondP50.toLocaleString(undefined, { maximumFractionDigits: 1 })} />
          )}
          {u.failureRate !== undefined && <Row term="Failure rate" value={formatRatio(u.failureRate)} />}
          {u.fallbackRate !== undefined && <Row term="Fallback rate" value={formatRatio(u.fallbackRate)} />}
        </dl>
      )}
      <ErrorBanner error={spend.error} />
      {spend.data && (
        <p className="small">
          Spent this month: <strong>{formatMoney(spend.data.spent)}</strong> over{" "}
          {Number(spend.data.modelCalls).toLocaleString()} model calls
          {spend.data.periodStartTime && (
            <span className="muted"> (since {timestampDate(spend.data.periodStartTime).toLocaleDateString()})</span>
          )}
        </p>
      )}
    </div>
  );
}
