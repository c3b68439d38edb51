// The signed-in user: a bearer token kept only in this tab's sessionStorage (gone when the
// tab closes), and the claims the UI reads from it. The page never verifies the token;
// every service does, on every call.
import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";

const STORAGE_KEY = "skm.token";

export interface Claims {
  sub: string;
  tenant: string;
  roles: string[];
  /** Seconds since the epoch. */
  exp: number;
  constitutionSha256: string;
}

export class TokenError extends Error {}

/** The claims of a JWT; throws TokenError when it is not one, or has no tenant or user. */
export function readClaims(token: string): Claims {
  const parts = token.trim().split(".");
  if (parts.length !== 3) throw new TokenError("that is not a JWT (three dot-separated parts)");
  let body: Record<string, unknown>;
  try {
    const text = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(parts[1].length / 4) * 4, "="));
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new TokenError("the token's claims are not readable JSON");
  }
  const tenant = typeof body.tenant === "string" ? body.tenant : "";
  const sub = typeof body.sub === "string" ? body.sub : "";
  if (!tenant || !sub) throw new TokenError("the token names no tenant or no user (claims `tenant`, `sub`)");
  const exp = typeof body.exp === "number" ? body.exp : 0;
  if (exp && exp * 1000 < Date.now()) throw new TokenError("the token has expired: make a new one with `skm token`");
  return {
    sub,
    tenant,
    roles: Array.isArray(body.roles) ? body.roles.filter((r): r is string => typeof r === "string") : [],
    exp,
    constitutionSha256: typeof body.constitution_sha256 === "string" ? body.constitution_sha256 : "",
  };
}

export function storedToken(): string {
  return sessionStorage.getItem(STORAGE_KEY) ?? "";
}

interface AuthState {
  token: string;
  claims: Claims | null;
  /** Keep the token for this tab; throws TokenError when it cannot be read. */
  signIn(token: string): void;
  signOut(): void;
}

const AuthContext = createContext<AuthState | null>(null);

function initial(): { token: string; claims: Claims | null } {
  const token = storedToken();
  if (!token) return { token: "", claims: null };
  try {
    return { token, claims: readClaims(token) };
  } catch {
    sessionStorage.removeItem(STORAGE_KEY);
    return { token: "", claims: null };
  }
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [state, setState] = useState(initial);
  const signIn = useCallback((token: string) => {
    const claims = readClaims(token);
    sessionStorage.setItem(STORAGE_KEY, token.trim());
    setState({ token: token.trim(), claims });
  }, []);
  const signOut = useCallback(() => {
    sessionStorage.removeItem(STORAGE_KEY);
    setState({ token: "", claims: null });
  }, []);
  const value = useMemo(() => ({ ...state, signIn, signOut }), [state, signIn, signOut]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthState {
  const state = useContext(AuthContext);
  if (!state) throw new Error("useAuth outside AuthProvider");
  return state;
}

/** The signed-in user's claims; only for views that render behind the sign-in. */
export function useClaims(): Claims {
  const { claims } = useAuth();
  if (!claims) throw new Error("useClaims before sign-in");
  return claims;
}

/** `tenants/<id>`, the parent of most resources. */
export function tenantName(claims: Claims): string {
  return `tenants/${claims.tenant}`;
}
