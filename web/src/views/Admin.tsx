// Tenant admin (#/admin): who may do what, personas, model budgets, the constitution and the
// audit log, each section on its own service and with its own errors, all of this tenant.
import { tenantName, useClaims } from "../lib/auth";
import { AuditLogSection } from "./admin/AuditLog";
import { BudgetsSection } from "./admin/Budgets";
import { ConstitutionSection } from "./admin/Constitution";
import { PersonasSection } from "./admin/Personas";
import { RelationshipsSection } from "./admin/Relationships";
import { TenantCard } from "./admin/TenantCard";
import type { ViewProps } from "./types";
import "./admin/common.css";
import "./admin/admin.css";

export default function Admin(_props: ViewProps) {
  const claims = useClaims();
  const tenant = tenantName(claims);
  return (
    <div className="stack admin-view">
      <h1>Tenant admin</h1>
      {!claims.roles.includes("admin") && (
        <p className="muted small">
          Your token does not carry the admin role: the services will likely refuse most of what follows (each
          section shows their answer).
        </p>
      )}
      <TenantCard tenant={tenant} />
      <RelationshipsSection tenant={tenant} />
      <PersonasSection tenant={tenant} />
      <BudgetsSection tenant={tenant} />
      <ConstitutionSection tenant={tenant} />
      <AuditLogSection tenant={tenant} />
    </div>
  );
}
