// Where the page finds the platform. skm_stack.web answers /config.json with the public
// entry (Envoy) and whether the development sign-in exists; `npm run dev` has no such
// server, so the dev build falls back to the Envoy URL vite.config.ts was given.
declare const __SKM_DEV_ENVOY__: string;

export interface UiConfig {
  /** The public entry, e.g. http://127.0.0.1:8080: every call goes there over grpc-web. */
  envoyUrl: string;
  /** True when `make run` serves the page: the one-click demo sign-in is offered. */
  demoSignIn: boolean;
  /** An OIDC issuer's authorize URL, when a deployment configures one (README: OIDC). */
  oidcAuthorizeUrl: string;
  oidcClientId: string;
}

let loaded: UiConfig | undefined;

export async function loadConfig(): Promise<UiConfig> {
  if (loaded) return loaded;
  try {
    const response = await fetch("/config.json", { cache: "no-store" });
    if (response.ok && (response.headers.get("content-type") ?? "").includes("json")) {
      const body = (await response.json()) as Partial<UiConfig>;
      loaded = {
        envoyUrl: body.envoyUrl ?? __SKM_DEV_ENVOY__,
        demoSignIn: Boolean(body.demoSignIn),
        oidcAuthorizeUrl: body.oidcAuthorizeUrl ?? "",
        oidcClientId: body.oidcClientId ?? "",
      };
      return loaded;
    }
  } catch {
    // No config server (vite dev): the defaults below.
  }
  loaded = { envoyUrl: __SKM_DEV_ENVOY__, demoSignIn: false, oidcAuthorizeUrl: "", oidcClientId: "" };
  return loaded;
}

export function config(): UiConfig {
  if (!loaded) throw new Error("loadConfig() has not finished");
  return loaded;
}
