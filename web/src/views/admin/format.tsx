// Small formatters shared by the approvals and tenant admin views: times, money, resource
// names and enum names, so every table says them the same way.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Money } from "../../gen/skm/type/v1/money_pb.js";

/** The last segment of a resource name: "tenants/t/users/alice" -> "alice". */
export function lastSegment(name: string): string {
  const parts = name.split("/");
  return parts[parts.length - 1] ?? name;
}

/** An enum value's name as the proto spells it without its prefix: PENDING, PRE_SLM. */
export function enumName(values: Record<number, string>, value: number): string {
  return values[value] ?? String(value);
}

/** "Pending", "Pre slm": an enum name for people. */
export function enumLabel(values: Record<number, string>, value: number): string {
  const name = enumName(values, value).toLowerCase().replace(/_/g, " ");
  return name.charAt(0).toUpperCase() + name.slice(1);
}

export function moneyAmount(money: Money | undefined): number {
  if (!money) return 0;
  return Number(money.units) + money.nanos / 1e9;
}

/** "0.0123 USD": four decimals, because single model calls cost fractions of a cent. */
export function formatMoney(amount: number, currency = "USD"): string {
  return `${amount.toFixed(4)} ${currency || "USD"}`;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function relativeTo(date: Date, now = Date.now()): string {
  const seconds = Math.round((date.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 60) return relative.format(seconds, "second");
  if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

export function formatDate(date: Date): string {
  return absolute.format(date);
}

/** A timestamp as a <time>: relative ("3 minutes ago") or absolute, the other in its title. */
export function Time({ ts, mode = "relative" }: { ts: Timestamp | undefined; mode?: "relative" | "absolute" }) {
  if (!ts) return <span className="muted">—</span>;
  const date = timestampDate(ts);
  const full = formatDate(date);
  return (
    <time dateTime={date.toISOString()} title={mode === "relative" ? full : relativeTo(date)}>
      {mode === "relative" ? relativeTo(date) : full}
    </time>
  );
}

/** Text that may be JSON, indented when it is; as it came otherwise. */
export function prettyJson(text: string): string {
  if (!text.trim()) return "";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
