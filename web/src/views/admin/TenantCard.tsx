// The tenant as onboarding left it (TenantService.GetTenant): a few facts above the sections.
import { Tenant_State } from "../../gen/skm/profiles/v1/tenant_pb.js";
import { ErrorBanner } from "../../components/ErrorBanner";
import { api } from "../../lib/api";
import { enumLabel, Time } from "./format";
import { useCall } from "./useCall";

export function TenantCard({ tenant }: { tenant: string }) {
  const got = useCall(() => api.tenants.getTenant({ name: tenant }), [tenant]);
  const t = got.data?.tenant;
  return (
    <div className="admin-tenant">
      <ErrorBanner error={got.error} />
      {t && (
        <dl className="kv small">
          <div>
            <dt>Tenant</dt>
            <dd>
              {t.displayName || t.name} <span className="mono muted">{t.name}</span>
            </dd>
          </div>
          <div>
            <dt>Onboarding</dt>
            <dd>{enumLabel(Tenant_State, t.state)}</dd>
          </div>
          <div>
            <dt>Created</dt>
            <dd>
              <Time ts={t.createTime} mode="absolute" />
            </dd>
          </div>
          <div>
            <dt>First admins</dt>
            <dd className="mono">{t.admins.join(", ") || "—"}</dd>
          </div>
        </dl>
      )}
    </div>
  );
}
