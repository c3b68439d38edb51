// The browser UI's build. `npm run dev` serves it with hot reload on 127.0.0.1:5173 and
// reads the public entry (Envoy) from SKM_WEB_ENVOY_URL (default http://127.0.0.1:8080);
// `npm run build` writes web/dist, which `make run` serves (skm_stack.web).
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const envoy = process.env.SKM_WEB_ENVOY_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  server: {
    host: "127.0.0.1",
    port: 5173,
    strictPort: true,
  },
  // In development the page asks the dev server for /config.json, as it asks skm_stack.web
  // in a real run; the dev server answers with the Envoy URL above.
  define: { __SKM_DEV_ENVOY__: JSON.stringify(envoy) },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true, chunkSizeWarningLimit: 1024 },
});
