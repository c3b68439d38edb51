// A chart.js line or bar chart over time buckets, with the same numbers in a data table for
// screen readers and keyboard users. chart.js is created on mount, updated in place when the
// data changes, and destroyed on unmount. Only the parts used are registered.
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartDataset,
} from "chart.js";
import { useEffect, useRef } from "react";

Chart.register(BarController, BarElement, CategoryScale, LinearScale, LineController, LineElement, PointElement, Legend, Tooltip);

export interface ChartLine {
  label: string;
  /** One per label; null: no samples in that bucket. */
  values: (number | null)[];
  /** A CSS custom property ("--accent") or a colour. */
  color: string;
  /** Line dash, so that series differ by more than colour. */
  dash?: number[];
  /** Bars with the same stack id are stacked. */
  stack?: string;
  /** Point marker of a line, so that equal values of several lines stay visible. */
  point?: "circle" | "triangle" | "rect";
}

interface Props {
  kind: "line" | "bar";
  /** The chart's accessible name. */
  title: string;
  labels: string[];
  lines: ChartLine[];
  format(value: number): string;
  stacked?: boolean;
}

type Kind = "line" | "bar";
type Values = (number | null)[];

function resolve(color: string): string {
  if (!color.startsWith("--")) return color;
  return getComputedStyle(document.documentElement).getPropertyValue(color).trim() || "#58606b";
}

function datasets(kind: Kind, lines: ChartLine[]): ChartDataset<Kind, Values>[] {
  return lines.map((line) => {
    const color = resolve(line.color);
    if (kind === "bar") {
      return { type: "bar", label: line.label, data: line.values, backgroundColor: color, borderColor: color, stack: line.stack };
    }
    return {
      type: "line",
      label: line.label,
      data: line.values,
      borderColor: color,
      backgroundColor: color,
      borderDash: line.dash ?? [],
      pointStyle: line.point ?? "circle",
      pointRadius: 3,
      borderWidth: 2,
      spanGaps: false,
    };
  });
}

export function TimeChart({ kind, title, labels, lines, format, stacked = false }: Props) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart<Kind, Values, string> | null>(null);
  const latestFormat = useRef(format);
  latestFormat.current = format;

  useEffect(() => {
    if (!canvas.current) return;
    const muted = resolve("--muted");
    const line = resolve("--line");
    const made = new Chart<Kind, Values, string>(canvas.current, {
      type: kind,
      data: { labels: [], datasets: [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        // Motion adds nothing to these numbers and bothers people who asked for less of it.
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: {
            stacked,
            ticks: { color: muted, maxRotation: 0, autoSkip: true, autoSkipPadding: 16, maxTicksLimit: 8 },
            grid: { color: line },
          },
          y: {
            stacked,
            beginAtZero: true,
            ticks: { color: muted, callback: (value) => latestFormat.current(Number(value)) },
            grid: { color: line },
          },
        },
        plugins: {
          // Lines show their dash in the legend; bars a box.
          legend: { labels: { color: muted, usePointStyle: kind === "line", pointStyle: "line" } },
          tooltip: {
            callbacks: {
              label: (item) =>
                `${item.dataset.label ?? ""}: ${item.parsed.y === null ? "no data" : latestFormat.current(item.parsed.y)}`,
            },
          },
        },
      },
    });
    chart.current = made;
    return () => {
      made.destroy();
      chart.current = null;
    };
  }, [kind, stacked]);

  useEffect(() => {
    const current = chart.current;
    if (!current) return;
    current.data.labels = labels;
    current.data.datasets = datasets(kind, lines);
    current.update();
  }, [kind, stacked, labels, lines]);

  // Buckets without any sample are left out of the table, as the server leaves them out.
  const rows = labels
    .map((label, index) => ({ label, index, cells: lines.map((l) => l.values[index]) }))
    .filter((r) => r.cells.some((c) => c !== null && c !== undefined));

  return (
    <figure className="dash-figure">
      <div className="dash-canvas">
        <canvas ref={canvas} role="img" aria-label={`${title} chart; the numbers are in the data table below it`} />
      </div>
      <details>
        <summary>Data table: {title}</summary>
        <div className="dash-scroll">
          <table className="table small">
            <caption className="visually-hidden">{title}</caption>
            <thead>
              <tr>
                <th scope="col">Time</th>
                {lines.map((l) => (
                  <th scope="col" key={l.label}>
                    {l.label}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={row.index}>
                  <th scope="row">{row.label}</th>
                  {row.cells.map((value, i) => (
                    <td key={lines[i].label}>{value === null || value === undefined ? "—" : format(value)}</td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </details>
    </figure>
  );
}
