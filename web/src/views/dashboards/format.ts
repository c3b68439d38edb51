// Axis, tooltip and table formats of the dashboards' units ("s", ratios, counts, money).

export function seconds(value: number): string {
  if (value !== 0 && Math.abs(value) < 1) return `${Math.round(value * 1000)} ms`;
  return `${value.toLocaleString(undefined, { maximumFractionDigits: 2 })} s`;
}

export function percent(value: number): string {
  return `${(value * 100).toLocaleString(undefined, { maximumFractionDigits: 1 })} %`;
}

export function count(value: number): string {
  return Math.round(value).toLocaleString();
}

export function score(value: number): string {
  return value.toLocaleString(undefined, { maximumFractionDigits: 2 });
}

/** An amount in a currency; small amounts keep enough digits not to read as zero. */
export function money(value: number, currency: string): string {
  const digits = value !== 0 && Math.abs(value) < 0.01 ? 6 : 2;
  const text = value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: digits });
  return currency ? `${text} ${currency}` : text;
}

/** "models/x" -> "x" */
export function shortModel(name: string): string {
  return name.replace(/^models\//, "");
}
