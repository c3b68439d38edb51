// The generated clients of every public service, over grpc-web to Envoy (the only address
// the page talks to). Each call carries the tab's token; retries are the caller's choice
// and only ever for UNAVAILABLE (the contract's rule).
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { DescService } from "@bufbuild/protobuf";
import { AnalyticsService } from "../gen/skm/analytics/v1/analytics_service_pb.js";
import { AudioService } from "../gen/skm/audio/v1/audio_service_pb.js";
import { ConversationService } from "../gen/skm/conversation/v1/conversation_service_pb.js";
import { BlockedActionService } from "../gen/skm/policy/v1/blocked_action_service_pb.js";
import { ConstitutionService } from "../gen/skm/policy/v1/constitution_service_pb.js";
import { PolicyService } from "../gen/skm/policy/v1/policy_service_pb.js";
import { ModelProfileService } from "../gen/skm/profiles/v1/model_profile_service_pb.js";
import { ModelService } from "../gen/skm/profiles/v1/model_service_pb.js";
import { PersonaService } from "../gen/skm/profiles/v1/persona_service_pb.js";
import { TenantService } from "../gen/skm/profiles/v1/tenant_service_pb.js";
import { KnowledgeService } from "../gen/skm/tools/v1/knowledge_service_pb.js";
import { ToolService } from "../gen/skm/tools/v1/tool_service_pb.js";
import { storedToken } from "./auth";
import { config } from "./config";

const withToken: Interceptor = (next) => async (request) => {
  const token = storedToken();
  if (token) request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};

let transport: ReturnType<typeof createGrpcWebTransport> | undefined;

function shared() {
  transport ??= createGrpcWebTransport({
    baseUrl: config().envoyUrl,
    interceptors: [withToken],
    // Binary protobuf, as native clients send; JSON grpc-web is not what Envoy's filter speaks.
    useBinaryFormat: true,
  });
  return transport;
}

const made = new Map<DescService, Client<DescService>>();

function client<T extends DescService>(service: T): Client<T> {
  let found = made.get(service);
  if (!found) {
    found = createClient(service, shared());
    made.set(service, found);
  }
  return found as Client<T>;
}

/** The clients, made on first use (after loadConfig). */
export const api = {
  get conversation() { return client(ConversationService); },
  get audio() { return client(AudioService); },
  get tools() { return client(ToolService); },
  get knowledge() { return client(KnowledgeService); },
  get policy() { return client(PolicyService); },
  get blocked() { return client(BlockedActionService); },
  get constitution() { return client(ConstitutionService); },
  get models() { return client(ModelService); },
  get modelProfiles() { return client(ModelProfileService); },
  get personas() { return client(PersonaService); },
  get tenants() { return client(TenantService); },
  get analytics() { return client(AnalyticsService); },
};

/** A fresh idempotency key for a create or a command (the contract's `request_id`). */
export function newRequestId(): string {
  return crypto.randomUUID();
}
