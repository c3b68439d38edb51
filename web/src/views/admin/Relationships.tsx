// "Users and roles": the tenant's OpenFGA relationship tuples (PolicyService). Reading needs
// an object or an object type (the RPC's rule), so the list is per resource, the tenant
// itself by default (its admins, operators and members). Add and delete write through
// svc_policy, which refuses tuples of other tenants and wildcards.
import { useState, type FormEvent } from "react";
import type { Relationship } from "../../gen/skm/policy/v1/access_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { Pager } from "./Pager";
import { useCall, usePages } from "./useCall";

// The object types of deploy/openfga/model.fga.
const OBJECT_TYPES = [
  "tenant",
  "session",
  "persona",
  "tool",
  "memory_namespace",
  "provisioning_action",
  "model_budget",
] as const;

// Relations the model lets a tuple set directly (the computed can_* ones cannot be written).
const RELATIONS = [
  "admin",
  "operator",
  "member",
  "owner",
  "tenant",
  "spender",
  "persona_user",
  "low_risk",
  "high_risk",
  "spawner",
  "supervised_spawner",
  "persona_reader",
  "persona_writer",
  "shared_with",
  "routine",
  "privileged",
  "agitation_watch",
  "over_cost_ceiling",
  "exhausted",
];

/** "alice" -> "user:tenants/t/users/alice"; a "{type}:{id}" subject stays as written. */
export function subjectOf(input: string, tenant: string): string {
  const value = input.trim();
  if (value.includes(":")) return value;
  if (value.includes("/")) return `user:${value}`;
  return `user:${tenant}/users/${value}`;
}

function conditionText(relationship: Relationship): string {
  const condition = relationship.condition;
  if (!condition?.name) return "";
  const context = condition.context && Object.keys(condition.context).length ? ` ${JSON.stringify(condition.context)}` : "";
  return `${condition.name}${context}`;
}

/** A tuple to write or delete: a read Relationship, or one typed in. */
type Tuple = Pick<Relationship, "subject" | "relation" | "object"> & { condition?: Relationship["condition"] };

function key(r: Relationship): string {
  return `${r.subject}\u0000${r.relation}\u0000${r.object}`;
}

export function RelationshipsSection({ tenant }: { tenant: string }) {
  const [type, setType] = useState<string>("tenant");
  const [resource, setResource] = useState(tenant);
  const [shown, setShown] = useState({ type: "tenant", resource: tenant });
  const pages = usePages();
  const object = `${shown.type}:${shown.resource.trim()}`;
  const read = useCall(
    () => api.policy.readRelationships({ parent: tenant, object, pageSize: 100, pageToken: pages.token }),
    [tenant, object, pages.token],
  );

  const [subject, setSubject] = useState("");
  const [relation, setRelation] = useState("member");
  const [target, setTarget] = useState(`tenant:${tenant}`);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();
  const [done, setDone] = useState<{ text: string; undo?: () => Promise<unknown> }>();

  /** Runs a write or delete; true when it went through. */
  const change = async (run: () => Promise<unknown>, text: string, undo?: () => Promise<unknown>) => {
    setBusy(true);
    setError(undefined);
    setDone(undefined);
    try {
      await run();
      setDone({ text, undo });
      await read.reload();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  };

  const write = (relationships: Tuple[]) => api.policy.writeRelationships({ parent: tenant, relationships });
  const remove = (relationships: Tuple[]) => api.policy.deleteRelationships({ parent: tenant, relationships });

  const add = (event: FormEvent) => {
    event.preventDefault();
    const tuple = { subject: subjectOf(subject, tenant), relation: relation.trim(), object: target.trim() };
    void change(() => write([tuple]), `Added: ${tuple.subject} ${tuple.relation} ${tuple.object}.`).then(
      (ok) => ok && setSubject(""),
    );
  };

  const deleteOne = (r: Relationship) =>
    change(
      () => remove([r]),
      `Deleted: ${r.subject} ${r.relation} ${r.object}.`,
      () => change(() => write([r]), `Restored: ${r.subject} ${r.relation} ${r.object}.`),
    );

  const show = (event: FormEvent) => {
    event.preventDefault();
    setShown({ type, resource });
    pages.reset();
  };

  const tuples = read.data?.relationships ?? [];

  return (
    <section className="card stack admin-section">
      <h2>Users and roles</h2>
      <p className="muted small">
        Who may do what in this tenant, as relationship tuples: e.g. a user is <code>admin</code>,{" "}
        <code>operator</code> or <code>member</code> of <code>tenant:{tenant}</code>. Roles nest: every admin is an
        operator, every operator a member.
      </p>

      <form className="row admin-filter" onSubmit={show}>
        <label htmlFor="rel-type">Resource type</label>
        <select
          id="rel-type"
          value={type}
          onChange={(event) => {
            setType(event.target.value);
            setResource(event.target.value === "tenant" ? tenant : "");
          }}
        >
          {OBJECT_TYPES.map((t) => (
            <option key={t} value={t}>
              {t}
            </option>
          ))}
        </select>
        <label htmlFor="rel-resource">Resource name</label>
        <input
          id="rel-resource"
          value={resource}
          onChange={(event) => setResource(event.target.value)}
          placeholder="empty: every one of the type"
          size={32}
        />
        <button type="submit" className="btn btn-small">
          Show tuples
        </button>
      </form>

      <ErrorBanner error={read.error} />
      {read.data && tuples.length === 0 && (
        <p className="muted" role="status">
          No tuple on <code>{object}</code>.
        </p>
      )}
      {tuples.length > 0 && (
        <div className="admin-scroll-x">
          <table className="table admin-table">
            <caption className="muted small">
              Tuples on <code>{object}</code>
            </caption>
            <thead>
              <tr>
                <th scope="col">Subject</th>
                <th scope="col">Relation</th>
                <th scope="col">On</th>
                <th scope="col">Condition</th>
                <th scope="col">
                  <span className="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {tuples.map((r) => (
                <tr key={key(r)}>
                  <td className="mono">{r.subject}</td>
                  <td className="mono">{r.relation}</td>
                  <td className="mono">{r.object}</td>
                  <td className="mono small">{conditionText(r) || <span className="muted">—</span>}</td>
                  <td>
                    <button
                      type="button"
                      className="btn btn-small btn-danger"
                      disabled={busy}
                      onClick={() => void deleteOne(r)}
                    >
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager
        what="tuples"
        page={pages.page}
        hasNext={Boolean(read.data?.nextPageToken)}
        busy={read.loading}
        onPrevious={pages.previous}
        onNext={() => pages.next(read.data?.nextPageToken ?? "")}
      />

      <h3>Add a tuple</h3>
      <form className="admin-form" onSubmit={add}>
        <div className="stack">
          <label htmlFor="rel-subject">User</label>
          <input
            id="rel-subject"
            value={subject}
            onChange={(event) => setSubject(event.target.value)}
            placeholder={`alice, or user:${tenant}/users/alice, or tenant:${tenant}#member`}
            aria-describedby="rel-subject-hint"
            required
          />
          <span id="rel-subject-hint" className="muted small">
            A user id, or any subject as <code>type:id</code>.
          </span>
        </div>
        <div className="stack">
          <label htmlFor="rel-relation">Relation</label>
          <input
            id="rel-relation"
            value={relation}
            onChange={(event) => setRelation(event.target.value)}
            list="rel-relations"
            required
          />
          <datalist id="rel-relations">
            {RELATIONS.map((r) => (
              <option key={r} value={r} />
            ))}
          </datalist>
        </div>
        <div className="stack">
          <label htmlFor="rel-object">Object</label>
          <input id="rel-object" value={target} onChange={(event) => setTarget(event.target.value)} required />
        </div>
        <div>
          <button type="submit" className="btn btn-primary" disabled={busy}>
            Add relationship
          </button>
        </div>
      </form>
      <ErrorBanner error={error} />
      <div role="status" className="small">
        {done && (
          <>
            {done.text}{" "}
            {done.undo && (
              <button type="button" className="btn btn-small" disabled={busy} onClick={() => void done.undo?.()}>
                Undo
              </button>
            )}
          </>
        )}
      </div>
    </section>
  );
}
