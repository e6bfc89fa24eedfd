// Drives the admin UI in Debian's headless Chromium with playwright-core, for tests/e2e/test_admin_ui.py.
//
// node admin_ui.mjs <base url> <admin secret> <channel> <user> <screenshot path> <user data dir> <data as JSON>
//
// Logs in (a wrong secret first, which must be refused), waits for the nodes and channels tables
// to show a gateway and the channel with one subscriber, looks up the channel's presence (the
// user must be in it), publishes <data> to the channel, waits for the chart to count it (and two
// samples more), saves a screenshot, disconnects the user and waits for the channel to leave the table, logs out.
// Prints one JSON line per step ({"step": ...}) so that the test can act between them: after
// "published" and "disconnected" it checks the Python client. Exits 0 with {"ok": true}, or 1
// with {"error": ...} (and a screenshot of the failure beside <screenshot path>).
// The page must raise no console error and no Content-Security-Policy violation.
import { chromium } from "playwright-core";

const [base, secret, channel, user, screenshot, userDataDir, data] = process.argv.slice(2);
const STEP_MS = 15000;
const step = (name, extra = {}) => console.log(JSON.stringify({ step: name, ...extra }));

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 1000 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(STEP_MS);
const problems = [];
page.on("console", (message) => {
  // A 401 at load (not logged in yet) and the refused wrong secret are the browser's own
  // "Failed to load resource" lines: expected. Anything else is a problem.
  if (message.type() === "error" && !/status of 401/.test(message.text())) problems.push(message.text());
});
page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));

// The text of a table's rows, one array of cell texts per row.
const rows = (selector) =>
  page.$$eval(`${selector} tbody tr`, (trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent)));

async function waitForRow(selector, matches, what) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const found = (await rows(selector)).find(matches);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`${what}: not in ${selector} (${JSON.stringify(await rows(selector))})`);
    await page.waitForTimeout(100);
  }
}

try {
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => console.error(`CSP violation: ${e.violatedDirective}`));
  });
  const response = await page.goto(`${base}/admin`);
  if (response.status() !== 200) throw new Error(`GET /admin: ${response.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  if (!csp.startsWith("default-src 'self'")) throw new Error(`no strict CSP: ${csp}`);
  await page.locator("#login-view").waitFor({ state: "visible" });
  step("login page");

  await page.fill("#secret", `${secret}-wrong`);
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "wrong secret" }).waitFor();
  if (await page.locator("#dashboard").isVisible()) throw new Error("a wrong secret opened the dashboard");
  step("wrong secret refused");

  await page.fill("#secret", secret);
  await page.click("#login-form button[type=submit]");
  await page.locator("#dashboard").waitFor({ state: "visible" });
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "meshcast_admin");
  if (!session || !session.httpOnly || session.sameSite !== "Strict") {
    throw new Error(`session cookie not HttpOnly+Strict: ${JSON.stringify(session)}`);
  }
  if (await page.evaluate(() => document.cookie.includes("meshcast_admin"))) throw new Error("script sees the cookie");
  step("logged in");

  const gateway = await waitForRow("#nodes", (r) => r[0].startsWith("gateway-") && r[2] === "1", "a gateway with 1 client");
  step("nodes", { gateway: gateway[0] });
  const listed = await waitForRow("#channels", (r) => r[0] === channel && r[1] === "1", `${channel} with 1 subscriber`);
  step("channels", { row: listed });

  await page.fill("#lookup-channel", channel);
  await page.click("#lookup-form button[data-method=presence]");
  await page.locator("#lookup-result", { hasText: `user ${user}` }).waitFor();
  step("presence", { text: await page.textContent("#lookup-result") });

  await page.fill("#publish-channel", channel);
  await page.fill("#publish-data", data);
  await page.click("#publish-form button[type=submit]");
  await page.locator("#publish-result", { hasText: "published" }).waitFor();
  step("published", { text: await page.textContent("#publish-result") });

  // Counted in the chart, with a few samples after it (so that the screenshot shows a line).
  await page.waitForFunction(() => Number(document.getElementById("rate-total").dataset.publications || 0) >= 1);
  const points = await page.$eval("#rate-total", (el) => Number(el.dataset.points));
  await page.waitForFunction((n) => Number(document.getElementById("rate-total").dataset.points) >= n + 2, points);
  step("chart", { text: await page.textContent("#rate-now") });
  await page.screenshot({ path: screenshot, fullPage: true });
  step("screenshot", { path: screenshot });

  await page.fill("#disconnect-user", user);
  await page.click("#disconnect-form button[type=submit]");
  await page.locator("#disconnect-result", { hasText: `disconnected user ${user}` }).waitFor();
  step("disconnected");
  await page.waitForFunction(
    (name) => ![...document.querySelectorAll("#channels tbody tr")].some((tr) => tr.cells[0].textContent === name),
    channel,
  );
  step("channel vacated");

  await page.click("#logout");
  await page.locator("#login-view").waitFor({ state: "visible" });
  const after = await page.evaluate(async () => {
    const r = await fetch("/admin/api/info", { method: "POST", headers: { "X-Meshcast-Admin": "1" }, body: "{}" });
    return r.status;
  });
  if (after !== 401) throw new Error(`after logout /admin/api/info answered ${after}`);
  step("logged out");

  if (problems.length) throw new Error(`console errors: ${problems.join(" | ")}`);
  console.log(JSON.stringify({ ok: true }));
  await context.close();
} catch (err) {
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failure.png"), fullPage: true }).catch(() => {});
  console.log(JSON.stringify({ error: String(err?.message || err), problems }));
  await context.close().catch(() => {});
  process.exit(1);
}
