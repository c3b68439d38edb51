// Debian's Chromium driven by playwright-core (no browser download: executablePath), for the
// UI's end-to-end scenarios. Every page's console errors and uncaught exceptions are
// collected: a scenario fails when there is any.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const EXECUTABLE = process.env.SKM_CHROMIUM ?? "/usr/bin/chromium";

// The flags this closed network needs (no background connections, no QUIC), and the fake
// microphone: Chromium plays the WAV file as the capture device and grants the permission.
function flags(wav) {
  const list = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
  ];
  if (wav) list.push(`--use-file-for-fake-audio-capture=${wav}`);
  return list;
}

export async function launch({ wav } = {}) {
  return chromium.launch({ executablePath: EXECUTABLE, headless: true, args: flags(wav) });
}

/** A fresh context and page; `problems` collects console errors and page errors. */
export async function openPage(browser, { baseURL, permissions = [] }) {
  const context = await browser.newContext({ baseURL, permissions, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  return { context, page, problems };
}

export function screenshots(dir) {
  mkdirSync(dir, { recursive: true });
  return async (page, name) => {
    const path = join(dir, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    return path;
  };
}
