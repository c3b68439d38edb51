// Approvals (#/approvals): the calls policy held for an operator (blocked actions), live,
// with a note and Approve / Reject on each pending one. Arrivals come from listing again
// every 2 s and resolutions from the watch stream (see admin/useHeldCalls.ts for why both).
import { useCallback, useMemo, useRef, useState } from "react";
import { BlockedAction_State, type BlockedAction } from "../gen/skm/policy/v1/blocked_action_pb.js";
import { ErrorBanner } from "../components/ErrorBanner";
import { api } from "../lib/api";
import { tenantName, useClaims } from "../lib/auth";
import { usePaletteActions, type PaletteAction } from "../lib/palette";
import { navigate } from "../lib/router";
import { actionTitle, HeldCallRow, type Verdict } from "./admin/HeldCallRow";
import { Pager } from "./admin/Pager";
import { usePages } from "./admin/useCall";
import { POLL_MS, useHeldCalls, type HeldCalls } from "./admin/useHeldCalls";
import { lastSegment } from "./admin/format";
import type { ViewProps } from "./types";
import "./admin/common.css";
import "./admin/approvals.css";

const S = BlockedAction_State;
// Constant arrays: useHeldCalls lists again when the filter's identity changes.
const FILTERS = [
  { id: "pending", label: "Pending", states: [S.PENDING] },
  { id: "approved", label: "Approved", states: [S.APPROVED] },
  { id: "rejected", label: "Rejected", states: [S.REJECTED] },
  { id: "expired", label: "Expired", states: [S.EXPIRED] },
  { id: "cancelled", label: "Cancelled", states: [S.CANCELLED] },
  { id: "run", label: "Running or run", states: [S.EXECUTING, S.EXECUTED] },
  { id: "all", label: "All", states: [] },
] as const;
type FilterId = (typeof FILTERS)[number]["id"];

const MAX_NEWS = 5;

function without<T>(record: Record<string, T>, key: string): Record<string, T> {
  const next = { ...record };
  delete next[key];
  return next;
}

function WatchLine({ held }: { held: HeldCalls }) {
  const { watch } = held;
  const listing = held.paused
    ? "Refreshing is paused after the error below: Refresh tries again."
    : `The list is refreshed every ${POLL_MS / 1000} s.`;
  return (
    <span className="muted small held-watch">
      {watch.kind === "watching" && `Live: resolutions stream in. ${listing}`}
      {watch.kind === "retrying" && `The resolution stream dropped; reconnecting in ${watch.seconds} s. ${listing}`}
      {watch.kind === "stopped" && (
        <>
          The resolution stream stopped. {listing}{" "}
          <button type="button" className="btn btn-small" onClick={held.reconnect}>
            Reconnect
          </button>
        </>
      )}
    </span>
  );
}

export default function Approvals({ route }: ViewProps) {
  const claims = useClaims();
  const parent = tenantName(claims);
  const [filterId, setFilterId] = useState<FilterId>(
    () => FILTERS.find((f) => f.id === route.query.get("state"))?.id ?? "pending",
  );
  const filter = FILTERS.find((f) => f.id === filterId) ?? FILTERS[0];
  const pages = usePages();
  const [news, setNews] = useState<{ at: Date; text: string }[]>([]);
  const pushNews = useCallback(
    (text: string) => setNews((list) => [{ at: new Date(), text }, ...list].slice(0, MAX_NEWS)),
    [],
  );
  const held = useHeldCalls(parent, filter.states, pages.token, pushNews, actionTitle);

  const [notes, setNotes] = useState<Record<string, string>>({});
  const [rowErrors, setRowErrors] = useState<Record<string, unknown>>({});
  const [busy, setBusy] = useState("");
  const [selected, setSelected] = useState("");
  const body = useRef<HTMLTableSectionElement>(null);

  const decide = useCallback(
    async (action: BlockedAction, verdict: Verdict) => {
      const index = held.items.findIndex((a) => a.name === action.name);
      setBusy(action.name);
      setRowErrors((errors) => without(errors, action.name));
      held.decidedHere.add(action.name);
      try {
        const request = { name: action.name, etag: action.etag, note: notes[action.name] ?? "" };
        const reply =
          verdict === "approve"
            ? await api.blocked.approveBlockedAction(request)
            : await api.blocked.rejectBlockedAction(request);
        if (reply.blockedAction) held.apply(reply.blockedAction);
        setNotes((all) => without(all, action.name));
        pushNews(`${verdict === "approve" ? "Approved" : "Rejected"}: ${actionTitle(action)}.`);
        // The row left the list with the focused button: keep keyboard focus in the table,
        // on the row that took its place.
        requestAnimationFrame(() => {
          if (document.activeElement && document.activeElement !== document.body) return;
          const rows = body.current?.querySelectorAll<HTMLElement>("tr");
          const row = rows?.[Math.min(index, rows.length - 1)];
          const target = row?.querySelector<HTMLElement>("input[type=text]") ?? row?.querySelector<HTMLElement>("input");
          (target ?? document.getElementById("held-calls-heading"))?.focus();
        });
      } catch (e) {
        held.decidedHere.delete(action.name);
        setRowErrors((errors) => ({ ...errors, [action.name]: e }));
        throw e;
      } finally {
        setBusy("");
        // ETAG_MISMATCH or ALREADY_RESOLVED: show the entry as it is now; on success, the
        // listing may now include other entries.
        void held.reload();
      }
    },
    [held, notes, pushNews],
  );

  const chooseFilter = (id: FilterId) => {
    setFilterId(id);
    pages.reset();
    setSelected("");
  };

  const selectedAction = held.items.find((a) => a.name === selected);
  const actions = useMemo<PaletteAction[]>(() => {
    const list: PaletteAction[] = [];
    if (selectedAction?.state === S.PENDING) {
      const title = actionTitle(selectedAction);
      list.push(
        {
          id: "approve-selected",
          title: `Approve the selected held call (${title})`,
          group: "Approvals",
          keywords: "allow blocked held approve selected",
          run: () => decide(selectedAction, "approve"),
        },
        {
          id: "reject-selected",
          title: `Reject the selected held call (${title})`,
          group: "Approvals",
          keywords: "deny blocked held reject selected",
          run: () => decide(selectedAction, "reject"),
        },
      );
    }
    if (selectedAction?.session) {
      const session = lastSegment(selectedAction.session);
      list.push({
        id: "open-selected-session",
        title: "Open the selected held call's session",
        group: "Approvals",
        keywords: "session conversation",
        run: () => navigate(`/sessions/${encodeURIComponent(session)}`),
      });
    }
    if (held.items.length > 0) {
      list.push({
        id: "select-first",
        title: "Select the first held call in the list",
        group: "Approvals",
        keywords: "oldest select",
        run: () => setSelected(held.items[0].name),
      });
    }
    for (const f of FILTERS) {
      if (f.id === filterId) continue;
      list.push({
        id: `filter-${f.id}`,
        title: `Show ${f.label.toLowerCase()} held calls`,
        group: "Approvals",
        keywords: "filter state",
        run: () => chooseFilter(f.id),
      });
    }
    list.push({
      id: "refresh",
      title: "Refresh the held calls",
      group: "Approvals",
      keywords: "reload list",
      run: () => held.reload(),
    });
    return list;
    // chooseFilter only uses stable setters.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [selectedAction, held, filterId, decide]);
  usePaletteActions("approvals", actions);

  const onDecide = (action: BlockedAction, verdict: Verdict) => {
    // The error is already shown in the row; the palette path needs the rejection instead.
    decide(action, verdict).catch(() => undefined);
  };

  return (
    <div className="stack approvals">
      <h1 id="held-calls-heading" tabIndex={-1}>
        Approvals
      </h1>
      <p className="muted">
        Calls that policy held until an operator decides. Approving lets the requesting service run the call once;
        rejecting makes it fail with REJECTED.
      </p>
      <div className="toolbar">
        <label htmlFor="held-filter">State</label>
        <select id="held-filter" value={filterId} onChange={(event) => chooseFilter(event.target.value as FilterId)}>
          {FILTERS.map((f) => (
            <option key={f.id} value={f.id}>
              {f.label}
            </option>
          ))}
        </select>
        <button type="button" className="btn btn-small" onClick={() => void held.reload()}>
          Refresh
        </button>
        <WatchLine held={held} />
      </div>
      {held.error !== undefined && <p className="small held-error-context">Listing the held calls failed:</p>}
      <ErrorBanner error={held.error} />
      {held.watchError !== undefined && <p className="small held-error-context">The resolution stream failed:</p>}
      <ErrorBanner error={held.watchError} />

      <section className="held-news" aria-labelledby="held-news-heading">
        <h2 id="held-news-heading" className="small muted">
          Activity
        </h2>
        <ul role="log" aria-live="polite" aria-relevant="additions">
          {news.map((item) => (
            <li key={`${item.at.getTime()}-${item.text}`} className="small">
              <time dateTime={item.at.toISOString()}>{item.at.toLocaleTimeString()}</time> {item.text}
            </li>
          ))}
          {news.length === 0 && <li className="small muted">Nothing has happened since the page opened.</li>}
        </ul>
      </section>

      {!held.loaded && !held.error && <p className="muted" role="status">Loading held calls…</p>}
      {held.loaded && held.items.length === 0 && !held.error && (
        <p className="muted" role="status">
          {filterId === "pending" ? "No call is waiting for a decision." : `No ${filter.label.toLowerCase()} held call.`}
        </p>
      )}
      {held.items.length > 0 && (
        <div className="held-scroll admin-scroll-x" tabIndex={0} role="region" aria-label="Held calls, scrollable">
          <table className="table admin-table held-table">
            <caption className="muted small">
              {filter.label} held calls, oldest first{pages.page > 1 ? `, page ${pages.page}` : ""}.
            </caption>
            <thead>
              <tr>
                <th scope="col">
                  <span className="visually-hidden">Selected</span>
                </th>
                <th scope="col">Tool / action</th>
                <th scope="col">Session</th>
                <th scope="col">Asked by</th>
                <th scope="col">Why held</th>
                <th scope="col">Asked</th>
                <th scope="col">Expires</th>
                <th scope="col">Payload</th>
                <th scope="col">Status</th>
                <th scope="col">Decision</th>
              </tr>
            </thead>
            <tbody ref={body}>
              {held.items.map((action) => (
                <HeldCallRow
                  key={action.name}
                  action={action}
                  selected={action.name === selected}
                  note={notes[action.name] ?? ""}
                  busy={busy === action.name}
                  error={rowErrors[action.name]}
                  onSelect={() => setSelected(action.name)}
                  onNote={(note) => setNotes((all) => ({ ...all, [action.name]: note }))}
                  onDecide={(verdict) => onDecide(action, verdict)}
                />
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager
        what="held calls"
        page={pages.page}
        hasNext={Boolean(held.nextPageToken)}
        onPrevious={pages.previous}
        onNext={() => pages.next(held.nextPageToken)}
      />
    </div>
  );
}
