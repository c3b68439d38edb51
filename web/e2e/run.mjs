// The UI's end-to-end scenarios in a real browser, against a running stack.
//   node web/e2e/run.mjs <scenario>
// Settings come from the environment (tests/e2e/test_browser.py sets them):
//   SKM_UI_URL          the page, e.g. http://127.0.0.1:8081/
//   SKM_UI_TOKEN        a user's token (pasted into the sign-in form)
//   SKM_UI_OPERATOR_TOKEN  an operator's token (approvals)
//   SKM_UI_SHOTS        where screenshots go
//   SKM_UI_WAV          the fake microphone's WAV file (voice)
// The last line of stdout is one JSON object: {"scenario", "ok", "figures", "screenshots"}.
// Exit status 0 only when every check held and no page logged an error.
import { launch, openPage, screenshots } from "./browser.mjs";
import { scenarios } from "./scenarios.mjs";

const name = process.argv[2];
const scenario = scenarios[name];
if (!scenario) {
  console.error(`unknown scenario ${name}; choose from ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}

const env = {
  url: process.env.SKM_UI_URL ?? "http://127.0.0.1:8081/",
  token: process.env.SKM_UI_TOKEN ?? "",
  operatorToken: process.env.SKM_UI_OPERATOR_TOKEN ?? "",
  wav: process.env.SKM_UI_WAV ?? "",
};
const shoot = screenshots(process.env.SKM_UI_SHOTS ?? "browser-screenshots");
const browser = await launch({ wav: env.wav });
const pages = [];
// Console messages a scenario expects (e.g. Chromium's own report of a stream cut on purpose).
const allowed = [];
const result = { scenario: name, ok: false, figures: {}, screenshots: [] };
try {
  const open = async (options = {}) => {
    const opened = await openPage(browser, { baseURL: env.url, ...options });
    pages.push(opened);
    return opened;
  };
  const snap = async (page, label) => result.screenshots.push(await shoot(page, label));
  const allow = (pattern) => allowed.push(pattern);
  await scenario({ env, open, snap, allow, figures: result.figures });
  const problems = pages.flatMap((p) => p.problems).filter((p) => !allowed.some((a) => a.test(p)));
  if (problems.length) throw new Error(`the page logged errors:\n  ${problems.join("\n  ")}`);
  result.ok = true;
} catch (error) {
  for (const [index, { page }] of pages.entries()) {
    try {
      result.screenshots.push(await shoot(page, `${name}-failure-${index}`));
    } catch {
      // The page is gone; the error below says why.
    }
  }
  console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
