import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { AuthProvider } from "./lib/auth";
import { loadConfig } from "./lib/config";
import { PaletteProvider } from "./lib/palette";
import { takeOidcToken } from "./components/SignIn";
import "./styles.css";

const oidc = takeOidcToken();
if (oidc) sessionStorage.setItem("skm.token", oidc);

void loadConfig().then(() => {
  createRoot(document.getElementById("root")!).render(
    <StrictMode>
      <AuthProvider>
        <PaletteProvider>
          <App />
        </PaletteProvider>
      </AuthProvider>
    </StrictMode>,
  );
});
