// Swagger UI in a real browser: Debian's Chromium, driven by playwright-core, opens /docs/ on
// a server this test starts, authorizes with an API key, runs "Try it out" on listAgents and
// sees a 200 with data. It then runs a quick `agentplane conform --coverage` against a
// second fresh server and opens the coverage page it wrote (a static file, no script). The
// screenshots are saved under $CARGO_TARGET_DIR/clients/ (or target/clients/) as CI
// artifacts: swagger-ui.png, swagger-ui-page.png, conform-coverage.png.
//
// Environment: CLIENTS_NODE_TOOLS (the folder where scripts/clients.sh installed
// playwright-core), AGENTPLANE_BIN (the server binary), CHROMIUM (default /usr/bin/chromium).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const target = process.env.CARGO_TARGET_DIR ?? join(root, "target");
const tools = process.env.CLIENTS_NODE_TOOLS ?? join(root, ".tools/clients-node");
const { chromium } = createRequire(join(tools, "package.json"))("playwright-core");
const bin = process.env.AGENTPLANE_BIN ?? join(target, "debug", "agentplane");

let server;
let browser;

async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "agentplane-ui-"));
  const child = spawn(bin, ["serve", "--listen", "127.0.0.1:0", "--database", `sqlite://${dir}/db`], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const ready = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`no start:\n${out}\n${err}`)), 30_000);
    child.once("exit", (code) => fail(new Error(`server exited ${code}:\n${err}`)));
    child.stdout.on("data", (d) => {
      out += d;
      const url = /listening on (http:\/\/[0-9.:]+)/.exec(out)?.[1];
      const key = /\b(ap_[A-Za-z0-9]+)/.exec(out)?.[1];
      if (url && key) {
        clearTimeout(timer);
        ok({ url, key });
      }
    });
  });
  return {
    ...ready,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs a command to its end (killed after `timeout` ms): its exit status and stderr. */
function runToEnd(command, args, timeout) {
  return new Promise((ok) => {
    const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    child.once("exit", (status) => {
      clearTimeout(timer);
      ok({ status, stderr });
    });
  });
}

before(async () => {
  server = await startServer();
  // Something to list: one agent, created over plain HTTP.
  const resp = await fetch(`${server.url}/v1/agents`, {
    method: "POST",
    headers: { Authorization: `Bearer ${server.key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ name: "Shown in Swagger UI", type: "assistant" }),
  });
  assert.equal(resp.status, 201);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // The machine has no network but loopback: keep Chromium from reaching out.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("Swagger UI: authorize with a key, Try it out on listAgents, 200 with data", async (t) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
  const shots = join(target, "clients");
  mkdirSync(shots, { recursive: true });
  for (const stale of ["swagger-ui.png", "swagger-ui-failure.png", "swagger-ui-failure-listAgents.png"]) {
    rmSync(join(shots, stale), { force: true });
  }
  // On failure, what the page showed is saved beside the success screenshot.
  let passed = false;
  t.after(async () => {
    if (passed) return;
    await page.screenshot({ path: join(shots, "swagger-ui-failure.png"), fullPage: true });
    const op = page.locator("#operations-agents-listAgents");
    if (await op.count()) {
      await op.screenshot({ path: join(shots, "swagger-ui-failure-listAgents.png") });
      const errors = await op.locator(".validation-errors, .invalid, .btn-group").allInnerTexts();
      t.diagnostic(`listAgents: ${JSON.stringify(errors)}`);
    }
  });
  const failures = [];
  page.on("requestfailed", (r) => failures.push(r.url()));
  await page.goto(`${server.url}/docs/`);
  await page.locator(".swagger-ui .info .title").waitFor({ timeout: 30_000 });

  // Authorize: the bearerAuth scheme takes the key as its value.
  await page.locator(".swagger-ui .auth-wrapper button.authorize").click();
  const modal = page.locator(".dialog-ux .modal-ux");
  const bearer = modal.locator(".auth-container").filter({ hasText: "bearerAuth" });
  await bearer.locator("input").fill(server.key);
  await bearer.locator("button.authorize").click();
  await bearer.getByText("Authorized").waitFor();
  await bearer.locator("button.btn-done").click();

  // Try it out on listAgents.
  const op = page.locator("#operations-agents-listAgents");
  await op.locator(".opblock-summary").first().click();
  // "Try it out" (src/http.rs may configure Swagger UI with it already on: then it reads
  // "Cancel" and must not be toggled off).
  const tryOut = op.locator("button.try-out__btn");
  if ((await tryOut.innerText()).trim() === "Try it out") await tryOut.click();
  await op.locator("button.execute").waitFor();
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server.url}/v1/agents`)),
    op.locator("button.execute").click(),
  ]);
  assert.equal(response.status(), 200);
  assert.equal(
    response.request().headers()["authorization"],
    `Bearer ${server.key}`,
    "Swagger UI sent the key it was given",
  );

  const live = op.locator(".live-responses-table .response");
  await live.locator(".response-col_status").filter({ hasText: "200" }).waitFor();
  const body = await live.locator(".response-col_description pre").first().innerText();
  const json = JSON.parse(body);
  assert.equal(json.pagination.total, 1);
  assert.equal(json.data[0].name, "Shown in Swagger UI");

  // The operation with its live 200 response, and the whole page.
  await op.screenshot({ path: join(shots, "swagger-ui.png") });
  await page.screenshot({ path: join(shots, "swagger-ui-page.png"), fullPage: true });
  assert.deepEqual(failures, [], "every request the page made succeeded");
  passed = true;
});

test("conform coverage page: every operation listed, readable without script", async () => {
  const shots = join(target, "clients");
  mkdirSync(shots, { recursive: true });
  const html = join(shots, "conform-coverage.html");
  const json = join(shots, "conform-coverage.json");
  for (const stale of [html, json, join(shots, "conform-coverage.png")]) rmSync(stale, { force: true });
  // A server of its own: the conform run creates resources the Swagger UI test counts.
  const own = await startServer();
  try {
    // Two requests per operation and phase, no boundary or negative phase: a few seconds,
    // and every operation exercised.
    // Asynchronously: a blocked event loop would stop draining the server's output pipes.
    const run = await runToEnd(
      bin,
      [
        "conform", "--spec", `${own.url}/openapi.json`, "--url", own.url,
        "-H", `Authorization: Bearer ${own.key}`, "--seed", "1", "--max-examples", "2",
        "--phases", "examples,fuzzing,stateful", "--coverage", html, "--coverage", json,
      ],
      120_000,
    );
    // Exit 1 would be a failed check, which scripts/test.sh judges; 2 is a broken run.
    assert.ok(run.status === 0 || run.status === 1, `conform exited ${run.status}:\n${run.stderr}`);
  } finally {
    await own.stop();
  }
  assert.ok(existsSync(html), "conform wrote the coverage page");
  const report = JSON.parse(readFileSync(json, "utf8"));
  const ops = report.totals.operations;
  assert.ok(ops.documented > 0);
  assert.equal(ops.covered, ops.documented, "every operation exercised");

  const page = await browser.newPage({ viewport: { width: 1400, height: 1200 }, javaScriptEnabled: false });
  const external = [];
  page.on("request", (r) => {
    if (!r.url().startsWith("file:")) external.push(r.url());
  });
  await page.goto(pathToFileURL(html).href);
  await page.getByRole("heading", { name: "Conformance coverage" }).waitFor();
  assert.equal(await page.locator("h2", { hasText: "Per tag" }).count(), 1);
  // One row per operation across the per-tag tables (an operation with two tags shows twice).
  const rows = await page.locator("table.ops tbody tr").count();
  assert.ok(rows >= report.totals.operations.documented, `${rows} rows`);
  assert.ok((await page.locator("svg.bar").count()) > 0, "a bar per tag");
  await page.screenshot({ path: join(shots, "conform-coverage.png") });
  assert.deepEqual(external, [], "the page loads nothing from anywhere");
});
