// The dashboards' time ranges: for each, the window and bucket width of the series, and a
// coarser window for the cost bars (per day where the range allows it). Starts are rounded
// down to a whole bucket so that buckets fall on clock boundaries (the server aligns them to
// start_time), and the cost's day buckets start at UTC midnight.

export type RangeId = "hour" | "day" | "week" | "month";

export interface Window {
  start: Date;
  end: Date;
  bucketMs: number;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

interface RangeSpec {
  id: RangeId;
  label: string;
  /** Span before the rounded start, and the series' bucket. */
  spanMs: number;
  bucketMs: number;
  costBucketMs: number;
  /** "Cost per …" */
  costPer: string;
}

export const RANGES: RangeSpec[] = [
  { id: "hour", label: "Last hour", spanMs: HOUR, bucketMs: MINUTE, costBucketMs: 10 * MINUTE, costPer: "10 minutes" },
  { id: "day", label: "Last day", spanMs: DAY, bucketMs: 15 * MINUTE, costBucketMs: HOUR, costPer: "hour" },
  { id: "week", label: "Last 7 days", spanMs: 6 * DAY, bucketMs: HOUR, costBucketMs: DAY, costPer: "day" },
  { id: "month", label: "Last 30 days", spanMs: 29 * DAY, bucketMs: 6 * HOUR, costBucketMs: DAY, costPer: "day" },
];

export function rangeSpec(id: RangeId): RangeSpec {
  return RANGES.find((r) => r.id === id) ?? RANGES[1];
}

/** `ms` rounded down to a multiple of `unit` since the epoch (UTC boundaries). */
function floorTo(ms: number, unit: number): number {
  return Math.floor(ms / unit) * unit;
}

/** Day-sized and larger ranges start at a UTC midnight, so whole days are compared. */
function windowOf(spec: RangeSpec, bucketMs: number, now: Date): Window {
  const align = spec.spanMs >= 6 * DAY ? DAY : bucketMs;
  const start = floorTo(now.getTime(), align) - spec.spanMs;
  return { start: new Date(start), end: now, bucketMs };
}

export function seriesWindow(id: RangeId, now: Date): Window {
  const spec = rangeSpec(id);
  return windowOf(spec, spec.bucketMs, now);
}

export function costWindow(id: RangeId, now: Date): Window {
  const spec = rangeSpec(id);
  return windowOf(spec, spec.costBucketMs, now);
}

/** Every bucket's start in the window, as the server aligns them. */
export function bucketStarts(window: Window): number[] {
  const starts: number[] = [];
  for (let t = window.start.getTime(); t < window.end.getTime(); t += window.bucketMs) starts.push(t);
  return starts;
}

/** A bucket's axis label: dates for day buckets (UTC days), times otherwise. */
export function bucketLabel(startMs: number, window: Window): string {
  const date = new Date(startMs);
  if (window.bucketMs >= DAY) {
    return date.toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
  }
  const span = window.end.getTime() - window.start.getTime();
  if (span > DAY + HOUR) {
    return date.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/** "15 minutes", "1 hour", "1 day" */
export function widthLabel(ms: number): string {
  if (ms >= DAY) return ms === DAY ? "1 day" : `${ms / DAY} days`;
  if (ms >= HOUR) return ms === HOUR ? "1 hour" : `${ms / HOUR} hours`;
  return ms === MINUTE ? "1 minute" : `${ms / MINUTE} minutes`;
}
