// Sign-in: paste a token from `skm token`, or (when `make run` serves the page) one click
// as the demo tenant's admin, or a deployment's OIDC redirect. The token stays in this tab.
import { useState, type FormEvent } from "react";
import { useAuth } from "../lib/auth";
import { config } from "../lib/config";

async function demoToken(): Promise<string> {
  // A custom header makes this a CORS-preflighted request, which skm_stack.web never
  // allows: only the page it serves itself can ask.
  const response = await fetch("/dev/demo-token", { method: "POST", headers: { "x-skm-demo": "1" } });
  const body = (await response.json().catch(() => ({}))) as { token?: string; error?: string };
  if (!response.ok || !body.token) throw new Error(body.error ?? `the demo sign-in answered ${response.status}`);
  return body.token;
}

function oidcRedirect(): void {
  const { oidcAuthorizeUrl, oidcClientId } = config();
  const state = crypto.randomUUID();
  sessionStorage.setItem("skm.oidc.state", state);
  const url = new URL(oidcAuthorizeUrl);
  url.searchParams.set("response_type", "id_token");
  url.searchParams.set("client_id", oidcClientId);
  url.searchParams.set("redirect_uri", `${window.location.origin}/`);
  url.searchParams.set("scope", "openid");
  url.searchParams.set("state", state);
  url.searchParams.set("nonce", crypto.randomUUID());
  window.location.assign(url.toString());
}

export function SignIn() {
  const { signIn } = useAuth();
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const { demoSignIn, oidcAuthorizeUrl } = config();

  const submit = (event: FormEvent) => {
    event.preventDefault();
    try {
      signIn(token);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  };

  const demo = async () => {
    setBusy(true);
    setError("");
    try {
      signIn(await demoToken());
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="signin">
      <h1>SomaKamachiq</h1>
      <p className="muted">Sign in to talk with the agent, approve held calls and run the tenant.</p>
      {demoSignIn && (
        <button type="button" className="btn btn-primary" onClick={() => void demo()} disabled={busy}>
          Sign in as the demo admin
        </button>
      )}
      <form onSubmit={submit} className="stack">
        <label htmlFor="token">Token</label>
        <textarea
          id="token"
          rows={4}
          value={token}
          onChange={(event) => setToken(event.target.value)}
          placeholder="Paste the output of: skm token --user admin --role admin"
          spellCheck={false}
        />
        <button type="submit" className="btn" disabled={!token.trim()}>
          Sign in with this token
        </button>
      </form>
      {oidcAuthorizeUrl && (
        <button type="button" className="btn" onClick={oidcRedirect}>
          Sign in with your identity provider
        </button>
      )}
      {error && (
        <p className="error-banner" role="alert">
          {error}
        </p>
      )}
      <p className="muted small">The token is kept only in this tab and is gone when it closes.</p>
    </main>
  );
}

/** After an OIDC redirect the id_token arrives in the fragment: take it, check the state. */
export function takeOidcToken(): string {
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = fragment.get("id_token");
  if (!token) return "";
  const expected = sessionStorage.getItem("skm.oidc.state");
  sessionStorage.removeItem("skm.oidc.state");
  history.replaceState(null, "", window.location.pathname);
  return expected && fragment.get("state") === expected ? token : "";
}
