// The UI's scenarios, each a person's use of the page, driven by accessible names (labels,
// roles, button text) as a keyboard or screen-reader user would find them.
import assert from "node:assert/strict";

const TERMINAL = ["COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"];
const LONG = { timeout: 180_000 };

async function signIn(page, token) {
  await page.goto("/");
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in with this token" }).click();
  await page.getByRole("navigation", { name: "Views" }).waitFor();
}

async function newSession(page) {
  await page.goto("/#/sessions");
  await page.getByRole("button", { name: "New session" }).first().click();
  await page.waitForURL(/#\/sessions\/(?!new)[^/?]+$/);
}

async function send(page, text, { tool } = {}) {
  if (tool) await page.getByLabel("Tool").selectOption(tool);
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByRole("button", { name: "Send", exact: true }).click();
}

/** The newest turn element, once it exists. */
function lastTurn(page) {
  return page.locator("[data-turn-state]").last();
}

async function turnState(page) {
  return (await lastTurn(page).getAttribute("data-turn-state")) ?? "";
}

async function waitForState(page, states, timeout = 180_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const state = await turnState(page).catch(() => "");
    if (states.some((s) => state.includes(s))) return state;
    if (Date.now() > deadline) throw new Error(`the turn stayed ${state || "absent"}, wanted ${states.join("/")}`);
    await page.waitForTimeout(100);
  }
}

/** Sign in, send a message that must call a tool; tokens grow on screen, the call and its verdict show. */
async function chat({ env, open, snap, figures }) {
  const { page } = await open();
  await signIn(page, env.token);
  await newSession(page);
  await send(page, "Work out 6 times 7 with Python.", { tool: "code_execution" });
  // Tokens as they come: the agent's text must be seen growing, not only whole.
  const lengths = new Set();
  const deadline = Date.now() + 180_000;
  let state = "";
  while (Date.now() < deadline) {
    const text = await lastTurn(page).locator(".agent-text").last().textContent().catch(() => null);
    if (text) lengths.add(text.length);
    state = await turnState(page);
    if (TERMINAL.some((s) => state.includes(s))) break;
    await page.waitForTimeout(30);
  }
  assert.ok(TERMINAL.some((s) => state.includes(s)), `the turn did not end: ${state}`);
  figures.token_updates_seen = lengths.size;
  assert.ok(lengths.size >= 2, `the agent text never grew on screen (lengths seen: ${[...lengths]})`);
  const turn = lastTurn(page);
  await turn.getByText("code_execution").first().waitFor();
  await turn.locator(".badge-allow").first().waitFor();
  const metrics = await page.evaluate(() => window.__skmMetrics ?? {});
  figures.send_to_first_token_ms = metrics.sendToFirstTokenMs ?? null;
  await snap(page, "session-workspace");
}

/** A running turn stops when the person presses Interrupt. */
async function interrupt({ env, open, snap }) {
  const { page } = await open();
  await signIn(page, env.token);
  await newSession(page);
  await send(page, "Tell me a long story about a lighthouse keeper.");
  await waitForState(page, ["RUNNING"]);
  await page.getByRole("button", { name: "Interrupt" }).click();
  await waitForState(page, ["INTERRUPTED"]);
  await snap(page, "interrupted-turn");
}

/** A high-risk call is held; an operator approves it in the approvals view; the turn goes on. */
async function approval({ env, open, snap }) {
  const user = await open();
  await signIn(user.page, env.token);
  await newSession(user.page);
  await send(user.page, "Run this for me.", { tool: "code_execution" });
  await waitForState(user.page, ["AWAITING_APPROVAL"]);
  await lastTurn(user.page).locator(".badge-held").first().waitFor();
  await snap(user.page, "held-call-in-session");

  const operator = await open();
  await signIn(operator.page, env.operatorToken);
  await operator.page.goto("/#/approvals");
  const row = operator.page.getByRole("row").filter({ hasText: "code_execution" }).first();
  await row.waitFor(LONG);
  await row.getByLabel("Note").fill("ok from the browser test");
  await snap(operator.page, "approvals");
  await row.getByRole("button", { name: "Approve" }).click();
  await row.waitFor({ state: "detached", timeout: 30_000 });

  // Back in the person's tab, live: the approved call runs, its result shows, the turn goes on.
  await lastTurn(user.page).locator(".sess-result").first().waitFor(LONG);
  // The untrained model may ask for the tool again in a later iteration, and each ask is held:
  // the operator approves each one until the turn ends.
  const deadline = Date.now() + 240_000;
  for (;;) {
    const state = await turnState(user.page);
    if (TERMINAL.some((s) => state.includes(s))) break;
    if (Date.now() > deadline) throw new Error(`the turn stayed ${state} after the approval`);
    const next = operator.page
      .getByRole("row")
      .filter({ hasText: "code_execution" })
      .filter({ has: operator.page.getByRole("button", { name: "Approve" }) })
      .first();
    if (state.includes("AWAITING_APPROVAL") && (await next.count()) > 0) {
      await next.getByRole("button", { name: "Approve" }).click();
      await next.waitFor({ state: "detached", timeout: 30_000 });
    }
    await user.page.waitForTimeout(300);
  }
  await snap(user.page, "session-after-approval");
}

/** The line the test writes on our stdin once it has done what a marker asked for. */
async function waitForTest(expected) {
  const { createInterface } = await import("node:readline");
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === expected) {
      lines.close();
      return;
    }
  }
  throw new Error(`stdin closed before ${expected}`);
}

/** The session's stream drops mid-turn (the test kills svc_conversation while a call waits
 * for approval): the page says it is reconnecting, re-attaches after the last event shown,
 * the rest of the turn arrives, and no event shows twice or is missed. */
async function reattach({ env, open, snap, allow, figures }) {
  // Chromium itself reports the cut stream and Envoy's 503 while the service is down; the
  // page logs nothing of its own.
  allow(/^console: Failed to load resource: (net::ERR_INCOMPLETE_CHUNKED_ENCODING|the server responded with a status of 503)/);
  const { page } = await open();
  await signIn(page, env.token);
  await newSession(page);
  // A call held for an operator keeps the turn open while the stream is cut; the test
  // approves it once svc_conversation is back, so the rest of the turn arrives on the new stream.
  await send(page, "Run this for me.", { tool: "code_execution" });
  await waitForState(page, ["AWAITING_APPROVAL"]);
  figures.before_drop = await page
    .locator("[data-sequence]")
    .evaluateAll((elements) => Math.max(...elements.map((el) => Number(el.getAttribute("data-sequence")))));
  const link = page.locator(".sess-link");
  // Every text the link status shows from now on, however briefly.
  await link.evaluate((element) => {
    const seen = (window.__skmLinkTexts = [element.textContent ?? ""]);
    new MutationObserver(() => seen.push(element.textContent ?? "")).observe(element, {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });
  console.log("DROP-NOW");
  await waitForTest("DROPPED");
  await page
    .waitForFunction(() => window.__skmLinkTexts.some((t) => /Reconnecting/.test(t)), null, { timeout: 60_000 })
    .catch(async () => {
      const texts = await page.evaluate(() => window.__skmLinkTexts);
      throw new Error(`the page never said it was reconnecting; its link status showed: ${JSON.stringify(texts)}`);
    });
  figures.saw_reconnecting = true;
  // The approved call's result arrives on the new stream; then the turn rests: it ends, or the
  // untrained model asks for the tool again and waits for approval (nothing more comes either way).
  await lastTurn(page).locator(".sess-result").first().waitFor(LONG);
  await waitForState(page, [...TERMINAL, "AWAITING_APPROVAL"], 240_000);
  await link.filter({ hasText: /^\s*Live/ }).waitFor(LONG);
  await page.waitForTimeout(1000);
  const sequences = await page
    .locator("[data-sequence]")
    .evaluateAll((elements) => elements.map((el) => Number(el.getAttribute("data-sequence"))));
  figures.events_shown = sequences.length;
  assert.equal(new Set(sequences).size, sequences.length, `an event shows twice: ${sequences}`);
  // The test compares them with the session's events as svc_conversation stored them.
  figures.sequences = sequences;
  figures.session_id = decodeURIComponent(page.url().split("#/sessions/")[1]);
  await snap(page, "re-attached");
}

/** A tenant admin's writes from the page: a model override, auto mode on, a roll back, auto
 * mode off; a
 * relationship added and deleted; a budget set and removed; the constitution saved (last:
 * it makes the admin's own token stale, which the page then says). */
async function admin({ env, open, snap, figures }) {
  const { page } = await open();
  await signIn(page, env.token);

  await page.goto("/#/models");
  const primary = page.getByRole("region", { name: "Primary" });
  await primary.getByText("Model (tier 0)").first().waitFor();
  const model = primary.getByLabel("Model", { exact: true });
  await page.waitForFunction(
    () => [...document.querySelectorAll("select option")].some((o) => o.value.startsWith("models/")),
  );
  const choices = await model.locator("option").evaluateAll((options) => options.map((o) => o.value).filter(Boolean));
  figures.override_model = choices[0];
  await model.selectOption(choices[0]);
  await primary.getByRole("button", { name: "Save override" }).click();
  await primary.getByText(/Tenant profile, revision 1\b/).waitFor();
  await primary.getByRole("button", { name: "Use auto mode" }).click();
  await primary.getByText(/Tenant profile, revision 2\b/).waitFor();
  await primary.getByText("Revisions", { exact: true }).click();
  await primary.getByRole("button", { name: "Roll back to revision 1" }).click();
  await primary.getByText(/Tenant profile, revision 3\b/).waitFor();
  // A roll back keeps auto mode as it is (the contract: undoing an automatic change must not
  // turn auto mode back on by itself), so it is still on; turning it off is one more revision.
  await primary.getByRole("button", { name: "Turn off auto mode" }).click();
  await primary.getByText(/Tenant profile, revision 4\b/).waitFor();
  await primary.getByRole("button", { name: "Use auto mode" }).and(page.locator(":enabled")).waitFor();
  await snap(page, "models-override-rolled-back");

  await page.goto("/#/admin");
  await page.getByRole("heading", { name: "Users and roles" }).waitFor();
  await page.getByLabel("User", { exact: true }).fill("bob");
  await page.getByLabel("Relation", { exact: true }).fill("member");
  await page.getByRole("button", { name: "Add relationship" }).click();
  const bob = page.getByRole("row").filter({ hasText: "/users/bob" });
  await bob.first().waitFor();
  await bob.first().getByRole("button", { name: "Delete" }).click();
  await bob.first().waitFor({ state: "detached" });

  await page.getByLabel("Budget role").selectOption({ label: "Primary" });
  await page.getByLabel("Monthly limit (USD)").fill("25");
  await page.getByRole("button", { name: "Set budget" }).click();
  const budgetRow = page.getByRole("row").filter({ has: page.getByRole("button", { name: "Remove budget" }) });
  await budgetRow.first().waitFor();
  assert.match((await budgetRow.first().textContent()) ?? "", /25/);
  await snap(page, "admin-budget-set");
  await budgetRow.first().getByRole("button", { name: "Remove budget" }).click();
  await budgetRow.first().waitFor({ state: "detached" });

  const constitution = page.getByLabel("Constitution", { exact: true });
  await constitution.fill("Be kind. Ask before anything that costs money.");
  await page.getByRole("button", { name: "Save constitution" }).click();
  await page.getByText("Constitution saved").waitFor();
  figures.stale_notice = true;
  await snap(page, "admin-constitution-saved");
}

/** Every view renders (a heading, no console error) and is screenshot. */
async function views({ env, open, snap }) {
  const { page } = await open();
  await page.goto("/");
  await snap(page, "sign-in");
  await signIn(page, env.token);
  for (const [path, label] of [
    ["sessions", "sessions"],
    ["approvals", "approvals"],
    ["audio", "voice"],
    ["models", "models"],
    ["dashboards", "dashboards"],
    ["admin", "tenant-admin"],
  ]) {
    await page.goto(`/#/${path}`);
    await page.getByRole("heading", { level: 1 }).first().waitFor();
    if (path === "models") {
      // What the PRIMARY role resolves to on the deployment default (ResolveModelProfile).
      const primary = page.getByRole("region", { name: "Primary" });
      await primary.getByText("Model (tier 0)").waitFor();
      assert.match((await primary.locator("dl").first().textContent()) ?? "", /untrained/i);
    }
    await page.waitForLoadState("networkidle").catch(() => undefined);
    await page.waitForTimeout(500);
    await snap(page, `view-${label}`);
  }
  await page.keyboard.press("Control+K");
  await page.getByRole("dialog", { name: "Quick actions" }).waitFor();
  await snap(page, "palette");
  await page.keyboard.press("Escape");

  // A phone's width: no view makes the page scroll sideways (wide tables scroll in their box).
  await page.setViewportSize({ width: 390, height: 844 });
  const overflowing = [];
  for (const path of ["sessions", "approvals", "audio", "models", "dashboards", "admin"]) {
    await page.goto(`/#/${path}`);
    await page.getByRole("heading", { level: 1 }).first().waitFor();
    await page.waitForTimeout(500);
    const wide = await page.evaluate(() => {
      if (document.documentElement.scrollWidth <= window.innerWidth + 1) return "";
      // The outermost elements that stick out, to say where to look.
      const out = [...document.querySelectorAll("main *")].filter(
        (el) => el.getBoundingClientRect().right > window.innerWidth + 1 && !el.parentElement?.closest("[data-wide]"),
      );
      const outermost = out.filter((el) => !out.includes(el.parentElement));
      outermost.forEach((el) => el.setAttribute("data-wide", ""));
      const name = (el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""}${el.className ? `.${String(el.className).split(" ").join(".")}` : ""}`;
      return `${document.documentElement.scrollWidth} px: ${outermost.slice(0, 5).map(name).join(", ")}`;
    });
    if (wide) overflowing.push(`${path} (${wide})`);
  }
  await page.goto("/#/sessions");
  await page.getByRole("heading", { level: 1 }).first().waitFor();
  await snap(page, "narrow-sessions");
  assert.deepEqual(overflowing, [], `views wider than a 390 px screen: ${overflowing.join(", ")}`);
}

/** The main flow with the keyboard alone: sign in, palette, new session, send, see the turn end. */
async function keyboard({ env, open, snap }) {
  const { page } = await open();
  await page.goto("/");
  await page.keyboard.press("Tab");
  // Tab until the token box has focus, type the token, submit with the keyboard.
  for (let i = 0; i < 10 && !(await page.getByLabel("Token").evaluate((el) => el === document.activeElement)); i++) {
    await page.keyboard.press("Tab");
  }
  await page.keyboard.insertText(env.token);
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.getByRole("navigation", { name: "Views" }).waitFor();
  await page.keyboard.press("Control+K");
  await page.keyboard.type("new session");
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/sessions\/(?!new)[^/?]+$/);
  await page.keyboard.press("Control+K");
  await page.keyboard.type("focus message");
  await page.keyboard.press("Enter");
  await page.keyboard.type("Hello there");
  await page.keyboard.press("Enter");
  await waitForState(page, TERMINAL);
  await snap(page, "keyboard-only");
}

/** `make run`'s one-click sign-in as the demo tenant's admin. */
async function demo({ open, snap, figures }) {
  const { page } = await open();
  await page.goto("/");
  await page.getByRole("button", { name: "Sign in as the demo admin" }).click();
  await page.getByRole("navigation", { name: "Views" }).waitFor();
  figures.signed_in_as = ((await page.locator(".whoami").textContent()) ?? "").trim();
  await snap(page, "demo-signed-in");
  // The onboarded demo tenant as its admin sees it (the test tenants of the other scenarios
  // are not onboarded, so their admin view says TENANT_NOT_FOUND for the tenant card).
  await page.goto("/#/admin");
  await page.getByRole("heading", { name: "Constitution" }).waitFor();
  await page.waitForLoadState("networkidle").catch(() => undefined);
  await snap(page, "demo-tenant-admin");
}

/** The fake microphone plays a WAV: the question is heard, the answer's audio arrives and plays. */
async function voice({ env, open, snap, figures }) {
  const { page } = await open({ permissions: ["microphone"] });
  await signIn(page, env.token);
  await page.goto("/#/audio");
  await page.getByRole("button", { name: "Start talking" }).click();
  await page.waitForFunction(() => (window.__skmAudio?.audioBytesReceived ?? 0) > 0, null, { timeout: 240_000 });
  await page.waitForFunction(() => (window.__skmAudio?.audioChunksPlayed ?? 0) > 0, null, { timeout: 60_000 });
  const audio = await page.evaluate(() => window.__skmAudio);
  figures.audio_bytes_received = audio.audioBytesReceived;
  figures.audio_chunks_played = audio.audioChunksPlayed;
  figures.chunks_sent = audio.chunksSent;
  figures.transcripts = audio.transcripts;
  figures.answer = audio.lastAnswerText;
  assert.ok(audio.transcripts.some((t) => /capital/i.test(t)), `the question was not heard: ${audio.transcripts}`);
  await snap(page, "voice-console");
  await page.getByRole("button", { name: "Stop" }).click();
}

export const scenarios = { chat, interrupt, approval, reattach, admin, views, keyboard, demo, voice };

// -- figures (python -m bench web) ------------------------------------------------------

function median(values) {
  const sorted = values.filter((v) => typeof v === "number").sort((a, b) => a - b);
  if (!sorted.length) return null;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Load the page in a fresh context (cold: nothing cached), then again in the same (cached). */
async function loadOnce(page) {
  const started = Date.now();
  await page.goto("/", { waitUntil: "load" });
  await page.getByLabel("Token").waitFor();
  const usable = Date.now() - started;
  return page.evaluate((usableMs) => {
    const nav = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    const bytes = [nav, ...resources].reduce((sum, entry) => sum + (entry.transferSize ?? 0), 0);
    return { usableMs, loadMs: nav.loadEventEnd, domReadyMs: nav.domContentLoadedEventEnd, transferred: bytes };
  }, usable);
}

/** Watch the page: the epoch of the next Enter in the message box, and of the first agent
 * text that appears after it (new, or changed since now), seen by a MutationObserver: the
 * moment it is on screen. */
async function armFirstToken(page) {
  await page.evaluate(() => {
    const marks = (window.__skmBench = { enter: 0, firstToken: 0 });
    const before = new Map([...document.querySelectorAll(".agent-text")].map((el) => [el, el.textContent ?? ""]));
    document.addEventListener(
      "keydown",
      (event) => {
        if (event.key === "Enter" && !event.shiftKey && !marks.enter) marks.enter = performance.timeOrigin + performance.now();
      },
      { capture: true },
    );
    const observer = new MutationObserver(() => {
      if (!marks.enter || marks.firstToken) return;
      const grown = [...document.querySelectorAll(".agent-text")].some((el) => {
        const text = (el.textContent ?? "").trim();
        return text.length > 0 && text !== (before.get(el) ?? "").trim();
      });
      if (grown) {
        marks.firstToken = performance.timeOrigin + performance.now();
        observer.disconnect();
      }
    });
    observer.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
}

async function bench({ env, open, figures }) {
  const rounds = Number(process.env.SKM_UI_ROUNDS ?? "5");
  const cold = [];
  const cached = [];
  for (let i = 0; i < rounds; i++) {
    const { page, context } = await open();
    cold.push(await loadOnce(page));
    cached.push(await loadOnce(page));
    await context.close();
  }
  for (const [label, list] of [["cold", cold], ["cached", cached]]) {
    figures[`${label}_usable_ms_p50`] = median(list.map((l) => l.usableMs));
    figures[`${label}_load_event_ms_p50`] = median(list.map((l) => l.loadMs));
    figures[`${label}_bytes_transferred`] = median(list.map((l) => l.transferred));
  }

  // Enter -> first token on screen, against the same turn's first token as `skm chat --json`
  // (a native gRPC client on the same session, started before the message) receives it.
  const { spawn } = await import("node:child_process");
  const { page } = await open();
  await signIn(page, env.token);
  await newSession(page);
  const session = decodeURIComponent(new URL(page.url()).hash.split("/").pop());
  const cli = spawn(process.env.SKM_UI_SKM ?? ".venv/bin/skm", ["chat", "--json", "--session", session], {
    env: { ...process.env, SKM_TOKEN: env.token, SKM_URL: process.env.SKM_UI_ENVOY ?? "http://127.0.0.1:8080" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines = [];
  let buffered = "";
  cli.stdout.on("data", (chunk) => {
    const now = Date.now();
    buffered += chunk.toString();
    const parts = buffered.split("\n");
    buffered = parts.pop();
    for (const line of parts) if (line.trim()) lines.push({ at: now, line });
  });
  await page.waitForTimeout(1500); // the CLI attaches to the session's stream
  const browserMs = [];
  const cliMs = [];
  const serverTtftMs = [];
  try {
    for (let i = 0; i < rounds; i++) {
      await armFirstToken(page);
      const mark = lines.length;
      const turnsBefore = await page.locator("[data-turn-state]").count();
      await page.getByLabel("Message", { exact: true }).fill(`Say something, round ${i + 1}.`);
      await page.getByLabel("Message", { exact: true }).press("Enter");
      // The new turn's element first: until it shows, the last one is the previous turn's.
      await page.waitForFunction((n) => document.querySelectorAll("[data-turn-state]").length > n, turnsBefore);
      await waitForState(page, TERMINAL);
      await page.waitForTimeout(300);
      const marks = await page.evaluate(() => window.__skmBench);
      const mine = lines.slice(mark);
      const firstDelta = mine.find((l) => l.line.includes('"tokenDelta"'));
      if (marks.enter && marks.firstToken) browserMs.push(marks.firstToken - marks.enter);
      if (marks.enter && firstDelta) cliMs.push(firstDelta.at - marks.enter);
      for (const l of mine) {
        const ttft = /"timeToFirstToken":\s*"([0-9.]+)s"/.exec(l.line);
        if (ttft) serverTtftMs.push(Number(ttft[1]) * 1000);
      }
    }
  } finally {
    cli.kill("SIGINT");
  }
  figures.turns = rounds;
  figures.browser_enter_to_first_token_ms = browserMs;
  figures.cli_enter_to_first_token_ms = cliMs;
  figures.model_call_ttft_ms = serverTtftMs;
  figures.browser_p50 = median(browserMs);
  figures.cli_p50 = median(cliMs);
}

scenarios.bench = bench;
