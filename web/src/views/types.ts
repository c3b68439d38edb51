import type { Route } from "../lib/router";

/** What the shell gives every view. */
export interface ViewProps {
  route: Route;
}
