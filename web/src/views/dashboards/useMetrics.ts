// One chart's QueryMetrics call: its series over a window, with loading and error state.
// Each chart asks on its own so that one refused query (say, an aggregation the server does
// not accept) leaves the other charts standing.
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useState } from "react";
import type { Aggregation, Dimension, Metric, TimeSeries } from "../../gen/skm/analytics/v1/metrics_pb.js";
import { api } from "../../lib/api";
import type { Window } from "./ranges";

export interface MetricsState {
  series: TimeSeries[] | undefined;
  error: unknown;
  loading: boolean;
}

export interface MetricAsk {
  metric: Metric;
  aggregation: Aggregation;
}

export function useMetrics(
  parent: string,
  queries: MetricAsk[],
  window: Window,
  groupBy: Dimension[] = [],
): MetricsState {
  const [state, setState] = useState<MetricsState>({ series: undefined, error: null, loading: true });
  // A value key: callers pass fresh arrays each render.
  const key = JSON.stringify([
    parent,
    queries,
    window.start.getTime(),
    window.end.getTime(),
    window.bucketMs,
    groupBy,
  ]);

  useEffect(() => {
    const controller = new AbortController();
    // Cleared, not kept: the old series belong to another window than the new labels.
    setState({ series: undefined, error: null, loading: true });
    api.analytics
      .queryMetrics(
        {
          parent,
          queries,
          startTime: timestampFromDate(window.start),
          endTime: timestampFromDate(window.end),
          bucketWidth: durationFromMs(window.bucketMs),
          groupBy,
        },
        { signal: controller.signal },
      )
      .then(
        (reply) => {
          if (!controller.signal.aborted) setState({ series: reply.series, error: null, loading: false });
        },
        (error: unknown) => {
          // No stale numbers under an error: the series are dropped.
          if (!controller.signal.aborted) setState({ series: undefined, error, loading: false });
        },
      );
    return () => controller.abort();
    // `key` holds every input by value.
  }, [key]);

  return state;
}

/** A series' values on the window's buckets; null where the server had no samples. */
export function valuesOn(series: TimeSeries, starts: number[]): (number | null)[] {
  const byStart = new Map<number, number>();
  for (const p of series.points) {
    if (p.startTime) byStart.set(Number(p.startTime.seconds) * 1000 + Math.round(p.startTime.nanos / 1e6), p.value);
  }
  return starts.map((t) => byStart.get(t) ?? null);
}

/** Sample counts on the window's buckets; 0 where there were none. */
export function samplesOn(series: TimeSeries | undefined, starts: number[]): number[] {
  const byStart = new Map<number, number>();
  for (const p of series?.points ?? []) {
    if (p.startTime) byStart.set(Number(p.startTime.seconds) * 1000 + Math.round(p.startTime.nanos / 1e6), Number(p.sampleCount));
  }
  return starts.map((t) => byStart.get(t) ?? 0);
}

export function hasPoints(series: TimeSeries[] | undefined): boolean {
  return (series ?? []).some((s) => s.points.length > 0);
}
