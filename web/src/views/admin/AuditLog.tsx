// "Audit log": the tenant's events of every topic, oldest first, paged
// (AnalyticsService.QueryAuditEvents), with the filters that request has: a session, payload
// types (one here), and a time range. The warehouse lags the events by a few seconds.
import { useState, type FormEvent } from "react";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Event } from "../../gen/skm/events/v1/event_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { Pager } from "./Pager";
import { EVENT_TYPES, eventJson, eventSummary, eventType } from "./events";
import { lastSegment, Time } from "./format";
import { useCall, usePages } from "./useCall";

const PAGE_SIZE = 50;

interface Filter {
  session: string;
  eventType: string;
  since: string;
  until: string;
}

const NO_FILTER: Filter = { session: "", eventType: "", since: "", until: "" };

/** "s1" -> "tenants/t/sessions/s1"; a full name stays as written. */
function sessionName(input: string, tenant: string): string {
  const value = input.trim();
  if (!value || value.includes("/")) return value;
  return `${tenant}/sessions/${value}`;
}

/** A datetime-local value (the browser's time zone) as a Timestamp; unset when empty. */
function timestampOf(value: string) {
  if (!value) return undefined;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? undefined : timestampFromDate(date);
}

/** The event as JSON, made only once opened: a page holds up to 50 events. */
function EventDetails({ event }: { event: Event }) {
  const [open, setOpen] = useState(false);
  return (
    <details onToggle={(e) => setOpen(e.currentTarget.open)}>
      <summary>JSON</summary>
      {open && <pre className="audit-json">{eventJson(event)}</pre>}
    </details>
  );
}

export function AuditLogSection({ tenant }: { tenant: string }) {
  const [draft, setDraft] = useState<Filter>(NO_FILTER);
  const [filter, setFilter] = useState<Filter>(NO_FILTER);
  const pages = usePages();
  const query = useCall(
    () =>
      api.analytics.queryAuditEvents({
        parent: tenant,
        session: sessionName(filter.session, tenant),
        eventTypes: filter.eventType ? [filter.eventType] : [],
        startTime: timestampOf(filter.since),
        endTime: timestampOf(filter.until),
        pageSize: PAGE_SIZE,
        pageToken: pages.token,
      }),
    [tenant, filter, pages.token],
  );

  const apply = (event: FormEvent) => {
    event.preventDefault();
    setFilter({ ...draft });
    pages.reset();
  };

  const reset = () => {
    setDraft(NO_FILTER);
    setFilter(NO_FILTER);
    pages.reset();
  };

  const set = (field: keyof Filter) => (event: { target: { value: string } }) =>
    setDraft((d) => ({ ...d, [field]: event.target.value }));

  const events = query.data?.events ?? [];
  return (
    <section className="card stack admin-section">
      <h2>Audit log</h2>
      <form className="admin-form" onSubmit={apply}>
        <div className="stack">
          <label htmlFor="audit-session">Session</label>
          <input id="audit-session" value={draft.session} onChange={set("session")} placeholder="id or full name; empty: all" />
        </div>
        <div className="stack">
          <label htmlFor="audit-type">Event type</label>
          <select id="audit-type" value={draft.eventType} onChange={set("eventType")}>
            <option value="">Any</option>
            {EVENT_TYPES.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </div>
        <div className="stack">
          <label htmlFor="audit-since">Since</label>
          <input id="audit-since" type="datetime-local" step={1} value={draft.since} onChange={set("since")} />
        </div>
        <div className="stack">
          <label htmlFor="audit-until">Until</label>
          <input id="audit-until" type="datetime-local" step={1} value={draft.until} onChange={set("until")} />
        </div>
        <div className="row">
          <button type="submit" className="btn btn-primary">
            Apply filters
          </button>
          <button type="button" className="btn" onClick={reset}>
            Clear filters
          </button>
          <button type="button" className="btn" onClick={() => void query.reload()} disabled={query.loading}>
            Refresh
          </button>
        </div>
      </form>
      <ErrorBanner error={query.error} />
      {query.loading && !query.data && <p className="muted">Loading events…</p>}
      {query.data && events.length === 0 && (
        <p className="muted" role="status">
          No event matches.
        </p>
      )}
      {events.length > 0 && (
        <div className="admin-scroll-x">
          <table className="table admin-table audit-table">
            <caption className="muted small">
              Events, oldest first, page {pages.page} ({events.length})
            </caption>
            <thead>
              <tr>
                <th scope="col">Time</th>
                <th scope="col">Event</th>
                <th scope="col">Source</th>
                <th scope="col">Actor</th>
                <th scope="col">Session</th>
                <th scope="col">What</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {events.map((event) => {
                const sessionId = event.session ? lastSegment(event.session) : "";
                return (
                  <tr key={event.eventId}>
                    <td>
                      <Time ts={event.eventTime} mode="absolute" />
                    </td>
                    <td className="mono small">{eventType(event)}</td>
                    <td>{event.source}</td>
                    <td title={event.principal?.user}>
                      {event.principal?.user ? lastSegment(event.principal.user) : <span className="muted">platform</span>}
                    </td>
                    <td>
                      {sessionId ? (
                        <a href={`#/sessions/${encodeURIComponent(sessionId)}`} title={event.session}>
                          {sessionId}
                        </a>
                      ) : (
                        <span className="muted">—</span>
                      )}
                    </td>
                    <td className="small">{eventSummary(event)}</td>
                    <td>
                      <EventDetails event={event} />
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      <Pager
        what="audit events"
        page={pages.page}
        hasNext={Boolean(query.data?.nextPageToken)}
        busy={query.loading}
        onPrevious={pages.previous}
        onNext={() => pages.next(query.data?.nextPageToken ?? "")}
      />
    </section>
  );
}
