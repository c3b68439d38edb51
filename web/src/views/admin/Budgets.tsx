// "Model budgets": a tenant's monthly model budget per role and what it has spent. The
// contract has no budget RPC of its own: a budget is svc_policy's object
// model_budget:tenants/{t}/modelBudgets/{role}, whose `exhausted` tuple carries the
// budget_exhausted condition with the limit in USD (deploy/openfga/model.fga; `skm budget`
// does the same). So budgets are read and set with PolicyService's relationship RPCs, and
// the spend comes from AnalyticsService.GetModelSpend (the current calendar month, UTC).
import { useState, type FormEvent } from "react";
import type { JsonValue } from "@bufbuild/protobuf";
import type { Relationship } from "../../gen/skm/policy/v1/access_pb.js";
import { ModelRole } from "../../gen/skm/type/v1/model_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { formatMoney, moneyAmount, Time } from "./format";
import { useCall } from "./useCall";

const CONDITION = "budget_exhausted";
const ROLES = [
  { role: ModelRole.PRIMARY, slug: "primary", label: "Primary" },
  { role: ModelRole.UTILITY, slug: "utility", label: "Utility" },
  { role: ModelRole.PRE_SLM, slug: "pre_slm", label: "Pre-SLM" },
  { role: ModelRole.EMBEDDING, slug: "embedding", label: "Embedding" },
] as const;
type Slug = (typeof ROLES)[number]["slug"];

interface Budget {
  object: string;
  exists: boolean;
  limitUsd: number | undefined;
  spenders: string[];
  tuples: Relationship[];
}

function objectOf(tenant: string, slug: Slug): string {
  return `model_budget:${tenant}/modelBudgets/${slug}`;
}

function limitOf(tuples: Relationship[]): number | undefined {
  for (const r of tuples) {
    const value: JsonValue | undefined = r.condition?.context?.limit_usd;
    if (r.relation === "exhausted" && r.condition?.name === CONDITION && typeof value === "number") return value;
  }
  return undefined;
}

async function readBudgets(tenant: string): Promise<Record<Slug, Budget>> {
  const all: Relationship[] = [];
  let pageToken = "";
  // Every model_budget tuple of the tenant: a handful per role.
  for (let page = 0; page < 20; page++) {
    const reply = await api.policy.readRelationships({ parent: tenant, object: "model_budget:", pageSize: 1000, pageToken });
    all.push(...reply.relationships);
    pageToken = reply.nextPageToken;
    if (!pageToken) break;
  }
  const budgets = {} as Record<Slug, Budget>;
  for (const { slug } of ROLES) {
    const object = objectOf(tenant, slug);
    const tuples = all.filter((r) => r.object === object);
    budgets[slug] = {
      object,
      exists: tuples.some((r) => r.relation === "tenant"),
      limitUsd: limitOf(tuples),
      spenders: tuples.filter((r) => r.relation === "spender").map((r) => r.subject),
      tuples,
    };
  }
  return budgets;
}

async function readSpend(tenant: string) {
  const [all, ...perRole] = await Promise.all([
    api.analytics.getModelSpend({ tenant, role: ModelRole.UNSPECIFIED }),
    ...ROLES.map(({ role }) => api.analytics.getModelSpend({ tenant, role })),
  ]);
  return { all, perRole };
}

export function BudgetsSection({ tenant }: { tenant: string }) {
  const budgets = useCall(() => readBudgets(tenant), [tenant]);
  const spend = useCall(() => readSpend(tenant), [tenant]);
  const [slug, setSlug] = useState<Slug>("primary");
  const [limit, setLimit] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();
  const [done, setDone] = useState("");

  const change = async (work: () => Promise<string>) => {
    setBusy(true);
    setError(undefined);
    setDone("");
    try {
      setDone(await work());
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
      await budgets.reload();
    }
  };

  // As `skm budget set`: OpenFGA keeps one `exhausted` tuple per budget, so the old one goes
  // first (for that moment the budget has no limit), then the budget, its spenders (the
  // tenant's members unless it has some) and the new limit are written.
  const setBudget = (event: FormEvent) => {
    event.preventDefault();
    const limitUsd = Number(limit);
    if (!Number.isFinite(limitUsd) || limitUsd < 0) {
      setError(new Error("the limit must be a number of USD, 0 or more"));
      return;
    }
    void change(async () => {
      const current = (await readBudgets(tenant))[slug];
      const old = current.tuples.filter((r) => r.relation === "exhausted");
      if (old.length) await api.policy.deleteRelationships({ parent: tenant, relationships: old });
      const object = current.object;
      const spenders = current.spenders.length ? [] : [{ subject: `tenant:${tenant}#member`, relation: "spender", object }];
      await api.policy.writeRelationships({
        parent: tenant,
        relationships: [
          { subject: `tenant:${tenant}`, relation: "tenant", object },
          ...spenders,
          {
            subject: `${object}#spender`,
            relation: "exhausted",
            object,
            condition: { name: CONDITION, context: { limit_usd: limitUsd } },
          },
        ],
      });
      return `The ${slug} budget is now ${limitUsd} USD a month.`;
    });
  };

  const removeBudget = (which: Slug) =>
    void change(async () => {
      const current = (await readBudgets(tenant))[which];
      if (current.tuples.length) await api.policy.deleteRelationships({ parent: tenant, relationships: current.tuples });
      return `The ${which} budget is removed: its calls are no longer limited.`;
    });

  const period = spend.data?.all.periodStartTime;
  return (
    <section className="card stack admin-section">
      <h2>Model budgets</h2>
      <p className="muted small">
        A monthly limit in USD per model role. svc_conversation refuses a primary model call once the month&apos;s
        spend is past the limit. Spend counts the model-call events ingested so far (a few seconds behind), priced in
        USD, since <Time ts={period} mode="absolute" /> (the start of the month, UTC).
      </p>
      <ErrorBanner error={budgets.error} />
      <ErrorBanner error={spend.error} />
      {(budgets.data || spend.data) && (
        <div className="admin-scroll-x">
          <table className="table admin-table">
            <thead>
              <tr>
                <th scope="col">Role</th>
                <th scope="col">Monthly limit</th>
                <th scope="col">Spent this month</th>
                <th scope="col">Model calls</th>
                <th scope="col">Used</th>
                <th scope="col">Spenders</th>
                <th scope="col">
                  <span className="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {ROLES.map(({ slug: s, label }, index) => {
                const budget = budgets.data?.[s];
                const spent = spend.data?.perRole[index];
                const amount = spent ? moneyAmount(spent.spent) : undefined;
                const limitUsd = budget?.limitUsd;
                const over = amount !== undefined && limitUsd !== undefined && amount > limitUsd;
                return (
                  <tr key={s}>
                    <th scope="row" id={`budget-${s}`}>
                      {label}
                    </th>
                    <td>
                      {!budget ? (
                        <span className="muted">unknown</span>
                      ) : !budget.exists ? (
                        <span className="muted">no budget (spends freely)</span>
                      ) : limitUsd === undefined ? (
                        <span className="muted">no limit set</span>
                      ) : (
                        formatMoney(limitUsd)
                      )}
                    </td>
                    <td>{amount === undefined ? <span className="muted">unknown</span> : formatMoney(amount, spent?.spent?.currencyCode)}</td>
                    <td>{spent ? String(spent.modelCalls) : <span className="muted">unknown</span>}</td>
                    <td>
                      {amount !== undefined && limitUsd !== undefined && limitUsd > 0 ? (
                        <span className="row">
                          <meter
                            min={0}
                            max={limitUsd}
                            high={limitUsd * 0.8}
                            value={Math.min(amount, limitUsd)}
                            aria-label={`${label} spend against its limit`}
                          />
                          <span className={over ? "badge badge-deny" : "small"}>
                            {Math.round((amount / limitUsd) * 100)}%{over ? ", over: calls are refused" : ""}
                          </span>
                        </span>
                      ) : (
                        <span className="muted">—</span>
                      )}
                    </td>
                    <td className="mono small">{budget?.spenders.join(", ") || "—"}</td>
                    <td>
                      {budget?.exists && (
                        <button
                          type="button"
                          className="btn btn-small btn-danger"
                          disabled={busy}
                          aria-describedby={`budget-${s}`}
                          onClick={() => removeBudget(s)}
                        >
                          Remove budget
                        </button>
                      )}
                    </td>
                  </tr>
                );
              })}
              {spend.data && (
                <tr>
                  <th scope="row">All roles</th>
                  <td />
                  <td>{formatMoney(moneyAmount(spend.data.all.spent), spend.data.all.spent?.currencyCode)}</td>
                  <td>{String(spend.data.all.modelCalls)}</td>
                  <td colSpan={3} />
                </tr>
              )}
            </tbody>
          </table>
        </div>
      )}

      <form className="row admin-filter" onSubmit={setBudget}>
        <label htmlFor="budget-role">Budget role</label>
        <select id="budget-role" value={slug} onChange={(event) => setSlug(event.target.value as Slug)}>
          {ROLES.map((r) => (
            <option key={r.slug} value={r.slug}>
              {r.label}
            </option>
          ))}
        </select>
        <label htmlFor="budget-limit">Monthly limit (USD)</label>
        <input
          id="budget-limit"
          type="number"
          min={0}
          step="0.01"
          value={limit}
          onChange={(event) => setLimit(event.target.value)}
          required
        />
        <button type="submit" className="btn btn-primary" disabled={busy}>
          Set budget
        </button>
      </form>
      <ErrorBanner error={error} />
      <p role="status" className="small">
        {done}
      </p>
    </section>
  );
}
