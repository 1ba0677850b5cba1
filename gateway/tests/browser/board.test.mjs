// The board page in real headless Chromium against the real services (task service + two gateway
// replicas on a fresh database, the test PostgreSQL and NATS). Run by scripts/test.sh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../..");
const BIN = process.env.TASKBOARD_BIN_DIR || path.join(root, "target/debug");
const PG = process.env.TASKBOARD_TEST_PG || "postgres://postgres@127.0.0.1:5432/postgres";
const NATS = process.env.TASKBOARD_TEST_NATS || "nats://127.0.0.1:4222";
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ARTIFACTS = path.join(here, "artifacts");
const unique = `tb_t_browser_${process.pid}_${Date.now()}`;

// Authentication on, as deployed: an HS256 secret for the gateways, a service token between them
// and the task service.
const JWT_SECRET = randomBytes(24).toString("hex");
const SERVICE_TOKEN = randomBytes(16).toString("hex");

/// An HS256 JWT for `user`, valid for `ttl` seconds.
function tokenFor(user, ttl = 3600) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: String(user), aud: "taskboard", exp: Math.floor(Date.now() / 1000) + ttl });
  const sig = createHmac("sha256", JWT_SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}
const OWNER = tokenFor(1);

const procs = new Set();
let browser;
let tasksPort;
let gw1; // the gateway the pages use
let gw2; // a second replica (REST writes while a test's own gateway is down)

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

function start(bin, env) {
  const p = spawn(path.join(BIN, bin), [], {
    env: { PATH: process.env.PATH, RUST_LOG: "warn", METRICS_PORT: "0", ...env },
    stdio: ["ignore", "inherit", "inherit"],
  });
  procs.add(p);
  p.on("exit", () => procs.delete(p));
  return p;
}

async function waitReady(port) {
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/ready`);
      if (r.ok) return;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`gateway on ${port} never became ready`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startGateway(port) {
  const proc = start("taskboard-gateway", {
    HTTP_PORT: String(port), BIND_ADDR: "127.0.0.1", TASK_SERVICE_ADDR: `127.0.0.1:${tasksPort}`,
    NATS_URL: NATS, NATS_SUBJECT_PREFIX: unique, JWT_SECRET, SERVICE_TOKEN,
  });
  await waitReady(port);
  return { port, proc, url: `http://127.0.0.1:${port}` };
}

function stop(proc, signal = "SIGTERM") {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.once("exit", resolve);
    proc.kill(signal);
  });
}

async function rest(base, method, p, body, token = OWNER) {
  const r = await fetch(base + p, {
    method, headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: body && JSON.stringify(body),
  });
  assert.ok(r.ok, `${method} ${p}: ${r.status}`);
  return r.status === 204 ? null : r.json();
}

/// A new board owned by user 1 (the pages' user).
async function newBoard(name = "Test board") {
  return (await rest(gw1.url, "POST", "/api/boards", { name })).id;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  execFileSync("psql", [PG, "-qc", `CREATE DATABASE ${unique}`]);
  const db = PG.replace(/\/[^/]*$/, `/${unique}`);
  tasksPort = await freePort();
  start("taskboard-tasks", {
    PORT: String(tasksPort), BIND_ADDR: "127.0.0.1", DATABASE_URL: db, NATS_URL: NATS,
    NATS_SUBJECT_PREFIX: unique, RELAY_POLL_INTERVAL_MS: "200", SERVICE_TOKEN,
  });
  gw1 = await startGateway(await freePort());
  gw2 = await startGateway(await freePort());
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});

after(async () => {
  if (browser) await browser.close();
  await Promise.all([...procs].map((p) => stop(p)));
});

async function openBoard(board, viewport, gw = gw1, token = OWNER) {
  const ctx = await browser.newContext({ viewport: viewport || { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  page.dialogs = [];
  page.on("dialog", (d) => { page.dialogs.push(d.message()); d.dismiss(); });
  page.pageErrors = [];
  page.on("pageerror", (e) => page.pageErrors.push(String(e)));
  await page.goto(`${gw.url}/#board=${board}&token=${token}`);
  await page.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  return page;
}

const task = (page, title) => page.locator(".task", { has: page.locator(".title", { hasText: title }) });

async function addTask(page, title, description = "") {
  await page.fill("#new-title", title);
  await page.fill("#new-description", description);
  await page.click("#create-form button[type=submit]");
}

test("a task created in one page appears in the other within a second", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  const b = await openBoard(board);
  await addTask(a, "Buy milk", "two litres");
  await task(b, "Buy milk").waitFor({ timeout: 1000 });
  assert.equal(await task(b, "Buy milk").locator(".description").textContent(), "two litres");
  assert.equal(await b.locator("#open-list .task").count(), 1);
  assert.equal(await b.locator("#feed li").count(), 1);
  await a.context().close();
  await b.context().close();
});

test("Chromium negotiates permessage-deflate and the board works over it", async () => {
  const board = await newBoard();
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send("Network.enable");
  const handshakes = [];
  const frames = [];
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => handshakes.push(e.response));
  cdp.on("Network.webSocketFrameReceived", (e) => frames.push(e.response.payloadData));
  await page.goto(`${gw1.url}/#board=${board}&token=${OWNER}`);
  await page.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  const other = await openBoard(board);
  const title = "A long enough title that the gateway compresses its event before sending it";
  await addTask(other, title);
  await task(page, title).waitFor({ timeout: 2000 });
  const ws = handshakes.find((r) => r.status === 101);
  assert.ok(ws, "a WebSocket handshake was seen");
  const ext = Object.entries(ws.headers).find(([k]) => k.toLowerCase() === "sec-websocket-extensions");
  assert.ok(ext, `no Sec-WebSocket-Extensions in ${JSON.stringify(ws.headers)}`);
  assert.match(ext[1], /permessage-deflate/);
  assert.match(ext[1], /server_no_context_takeover/);
  // Chromium inflated the frame: the page (and CDP) saw the event's JSON.
  assert.ok(frames.some((f) => f.includes(title)), "the event arrived whole");
  await ctx.close();
  await other.context().close();
});

test("completing, editing and deleting flow between pages", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  const b = await openBoard(board);
  await addTask(a, "Write report");
  await task(b, "Write report").waitFor({ timeout: 1000 });

  // Complete in B: A moves it to the done column.
  await task(b, "Write report").locator(".toggle").check();
  await a.locator("#done-list .task", { hasText: "Write report" }).waitFor({ timeout: 1000 });
  assert.equal(await a.locator("#done-count").textContent(), "1");

  // Reopen in A by keyboard: B moves it back.
  await task(a, "Write report").locator(".toggle").focus();
  await a.keyboard.press("Space");
  await b.locator("#open-list .task", { hasText: "Write report" }).waitFor({ timeout: 1000 });

  // Edit the title inline in A (click, type, Enter): B shows the new title.
  await task(a, "Write report").locator(".title").click();
  await a.fill(".task input.edit", "Write the final report");
  await a.keyboard.press("Enter");
  await task(b, "Write the final report").waitFor({ timeout: 1000 });

  // Delete in B: gone from A.
  await task(b, "Write the final report").locator(".delete").click();
  await task(a, "Write the final report").waitFor({ state: "detached", timeout: 1000 });
  assert.equal(await a.locator(".task").count(), 0);
  await a.context().close();
  await b.context().close();
});

test("an edit that meets someone else's change shows theirs instead of overwriting it", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  const created = await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title: "Plan trip" });
  await task(a, "Plan trip").waitFor({ timeout: 1000 });
  // A starts editing the title; meanwhile someone else renames the task.
  await task(a, "Plan trip").locator(".title").click();
  await rest(gw1.url, "PUT", `/api/tasks/${created.id}`, { title: "Plan the summer trip" });
  await a.fill(".task input.edit", "Plan a trip");
  await a.keyboard.press("Enter");
  const err = a.locator("#error");
  await err.waitFor({ timeout: 2000 });
  assert.match(await err.textContent(), /Someone else changed this task meanwhile: it is now “Plan the summer trip”/);
  await task(a, "Plan the summer trip").waitFor({ timeout: 1000 });
  const now = await rest(gw1.url, "GET", `/api/tasks/${created.id}`);
  assert.equal(now.title, "Plan the summer trip", "the other change was not overwritten");
  assert.equal(now.version, 2);
  // Made again on the current version, the edit goes through.
  await task(a, "Plan the summer trip").locator(".title").click();
  await a.fill(".task input.edit", "Plan a trip");
  await a.keyboard.press("Enter");
  await task(a, "Plan a trip").waitFor({ timeout: 1000 });
  assert.equal((await rest(gw1.url, "GET", `/api/tasks/${created.id}`)).title, "Plan a trip");
  assert.deepEqual(a.pageErrors, []);
  await a.context().close();
});

test("a create whose answer was lost, sent again, does not make a second task", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  // The server creates the task, but its answer never reaches the page.
  let lost = 0;
  await a.route("**/api/tasks", async (route) => {
    if (route.request().method() === "POST" && lost === 0) {
      lost += 1;
      await route.fetch();
      return route.abort("connectionreset");
    }
    return route.continue();
  });
  await addTask(a, "Pay rent");
  await a.locator("#error").waitFor({ timeout: 2000 });
  await a.click("#create-form button[type=submit]");
  await a.locator("#error").waitFor({ state: "hidden", timeout: 2000 });
  await task(a, "Pay rent").waitFor({ timeout: 1000 });
  const list = await rest(gw1.url, "GET", `/api/tasks?board_id=${board}`);
  assert.equal(list.total_count, 1, "one task, not two");
  assert.equal(lost, 1);
  assert.equal(await a.locator(".task").count(), 1);
  await a.context().close();
});

test("a restarted gateway: reconnecting, then every change made meanwhile, none twice", async () => {
  // This test kills and restarts a gateway of its own, so whatever happens here, the shared
  // gateways the other tests use are left as they were.
  let own = await startGateway(await freePort());
  const board = await newBoard();
  const a = await openBoard(board, undefined, own);
  try {
    await addTask(a, "Before restart");
    await task(a, "Before restart").waitFor({ timeout: 1000 });

    await stop(own.proc, "SIGKILL");
    await a.locator("#conn", { hasText: "reconnecting" }).waitFor({ timeout: 5000 });

    // Changes through the other replica while this page's gateway is down.
    const created = [];
    for (const t of ["During 1", "During 2", "During 3"]) {
      created.push(await rest(gw2.url, "POST", "/api/tasks", { board_id: board, title: t, created_by: 7 }));
    }
    await rest(gw2.url, "PUT", `/api/tasks/${created[0].id}`, { completed: true });
    await rest(gw2.url, "DELETE", `/api/tasks/${created[2].id}`);

    own = await startGateway(own.port);
    await a.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 15000 });
    await a.locator("#done-list .task", { hasText: "During 1" }).waitFor({ timeout: 2000 });
    await task(a, "During 2").waitFor({ timeout: 2000 });
    await task(a, "During 3").waitFor({ state: "detached", timeout: 2000 });
    const titles = await a.locator(".task .title").allTextContents();
    assert.deepEqual(titles.sort(), ["Before restart", "During 1", "During 2"]);
    // Every event applied once: created x4, updated, deleted.
    assert.equal(await a.locator("#feed li").count(), 6);
    await a.screenshot({ path: path.join(ARTIFACTS, "board-after-restart.png") });
  } finally {
    await a.context().close();
    await stop(own.proc);
  }
});

test("a title with markup renders as text", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  const evil = "<img src=x onerror=alert(1)>";
  await addTask(a, evil, "<b>not bold</b>");
  await task(a, evil).waitFor({ timeout: 1000 });
  assert.equal(await a.locator(".task img").count(), 0);
  assert.equal(await a.locator(".task b").count(), 0);
  assert.equal(await task(a, evil).locator(".title").textContent(), evil);
  assert.deepEqual(a.dialogs, []);
  assert.deepEqual(a.pageErrors, []);
  await a.context().close();
});

test("errors from the API are shown in words, and the page works at phone width", async () => {
  const board = await newBoard();
  const a = await openBoard(board, { width: 390, height: 800 });
  // Past the form's own limit (as a script or an old page might send): the API's answer is shown.
  await a.evaluate(() => document.getElementById("new-description").removeAttribute("maxlength"));
  await a.fill("#new-title", "x".repeat(500));
  await a.fill("#new-description", "y".repeat(10001));
  await a.click("#create-form button[type=submit]");
  const err = a.locator("#error");
  await err.waitFor({ timeout: 2000 });
  assert.match(await err.textContent(), /Description is too long/);
  // One column on a phone: the done column sits under the open one.
  const open = await a.locator("#open-list").boundingBox();
  const done = await a.locator("#done-list").boundingBox();
  assert.ok(done.y > open.y, "columns stack");
  const width = await a.evaluate(() => document.documentElement.scrollWidth);
  // Name what sticks out, so a failure on a machine with wider fonts says where to look.
  const wide = await a.evaluate(() => [...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > 390 && e.getClientRects().length > 0)
    .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}`).slice(0, 8));
  assert.ok(width <= 390, `no horizontal scroll (${width}px; past the edge: ${wide.join(", ")})`);
  await a.context().close();
});

test("screenshot of a board", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  for (const [t, d] of [["Plan sprint", "Pick the next issues"], ["Review PR #42", ""], ["Update docs", "README quick start"]]) {
    await addTask(a, t, d);
    await task(a, t).waitFor({ timeout: 1000 });
  }
  await task(a, "Review PR #42").locator(".toggle").check();
  await a.locator("#done-list .task").waitFor({ timeout: 1000 });
  await a.screenshot({ path: path.join(ARTIFACTS, "board.png"), fullPage: true, animations: "disabled" });
  await a.context().close();
});

test("signing in: the token leaves the address, and 401/403 are shown in words", async () => {
  const board = await newBoard("Signed");
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  // Without a token: asked to sign in, nothing loads.
  await page.goto(`${gw1.url}/#board=${board}`);
  await page.locator("#error", { hasText: "Please sign in" }).waitFor({ timeout: 3000 });
  // A viewer signs in through the field: the board loads, writing is refused in words.
  await rest(gw1.url, "PUT", `/api/boards/${board}/members/5`, { role: "viewer" });
  await page.fill("#token", tokenFor(5));
  await page.click("#sign-in");
  await page.locator("#who", { hasText: "signed in as user 5" }).waitFor({ timeout: 3000 });
  await page.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  await addTask(page, "not mine to add");
  await page.locator("#error", { hasText: "You are not allowed" }).waitFor({ timeout: 3000 });
  assert.match(await page.locator("#error").textContent(), /viewer/);
  // A token in the address is stored and taken out of it.
  const other = await ctx.newPage();
  await other.goto(`${gw1.url}/#board=${board}&token=${OWNER}`);
  await other.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  assert.ok(!other.url().includes("token="), other.url());
  assert.ok(other.url().includes(`board=${board}`), other.url());
  // Someone else's board: 403 in words.
  const theirs = await rest(gw1.url, "POST", "/api/boards", { name: "Private" }, tokenFor(9));
  const stranger = await ctx.newPage();
  await stranger.goto(`${gw1.url}/#board=${theirs.id}&token=${tokenFor(5)}`);
  await stranger.locator("#error", { hasText: "not a member" }).waitFor({ timeout: 3000 });
  await ctx.close();
});

test("a sign-in in another tab reaches the open board in-band, and one as someone else reopens it", async () => {
  const board = await newBoard("Refreshed");
  await rest(gw1.url, "PUT", `/api/boards/${board}/members/2`, { role: "editor" });
  // Opened with a token that expires in 3 s.
  const page = await openBoard(board, undefined, gw1, tokenFor(1, 3));
  // Sockets opened from now on (the first one is already open).
  const reconnects = [];
  page.on("websocket", (ws) => reconnects.push(ws.url()));
  // Another tab of the same browser signs the same user in again with a fresh token.
  const other = await page.context().newPage();
  await other.goto(`${gw1.url}/#board=${board}&token=${tokenFor(1, 3600)}`);
  await other.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  // Past the first token's expiry the first page is still live, on the same socket.
  await new Promise((r) => setTimeout(r, 4500));
  await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title: "after the old token" });
  await task(page, "after the old token").waitFor({ timeout: 2000 });
  assert.equal(await page.locator("#conn").textContent(), "connected");
  assert.equal(await page.locator("#error").isHidden(), true);
  assert.equal(reconnects.length, 0, `reconnected: ${reconnects}`);
  // A sign-in as user 2 in the other tab: the socket is closed (another user) and the board
  // opens again as user 2.
  const reopened = page.waitForEvent("websocket", { timeout: 5000 });
  await other.evaluate((t) => localStorage.setItem("taskboard.token", t), tokenFor(2));
  await reopened;
  await page.locator("#who", { hasText: "signed in as user 2" }).waitFor({ timeout: 3000 });
  await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title: "seen by user 2" });
  await task(page, "seen by user 2").waitFor({ timeout: 3000 });
  assert.equal(reconnects.length, 1);
  assert.deepEqual(page.pageErrors, []);
  await page.context().close();
});

test("a new board is created from the page and opened", async () => {
  const board = await newBoard();
  const a = await openBoard(board);
  await a.fill("#board-name", "Created here");
  await a.click("#new-board-form button[type=submit]");
  await a.waitForFunction((b) => !location.hash.includes(`board=${b}`), board, { timeout: 3000 });
  await a.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  await addTask(a, "first");
  await task(a, "first").waitFor({ timeout: 1000 });
  await a.context().close();
});

test("a task's history says who changed what, and grows live while open", async () => {
  const board = await newBoard();
  await rest(gw1.url, "PUT", `/api/boards/${board}/members/2`, { role: "editor" });
  const other = tokenFor(2);
  const a = await openBoard(board);
  const t = await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title: "Plan" });
  await rest(gw1.url, "PUT", `/api/tasks/${t.id}`, { title: "Plan v2" }, other);
  await task(a, "Plan v2").waitFor({ timeout: 1000 });
  await task(a, "Plan v2").locator(".show-history").click();
  const items = task(a, "Plan v2").locator(".history li");
  await items.nth(1).waitFor({ timeout: 2000 });
  const texts = await items.allTextContents();
  assert.equal(texts.length, 2, texts.join(" | "));
  assert.match(texts[0], /: you created “Plan”$/);
  assert.match(texts[1], /: user 2 renamed “Plan” → “Plan v2”$/);
  // While it is open, a change made elsewhere appears in it.
  await rest(gw1.url, "PUT", `/api/tasks/${t.id}`, { completed: true }, other);
  await items.nth(2).waitFor({ timeout: 2000 });
  assert.match(await items.nth(2).textContent(), /: user 2 marked it done$/);
  assert.equal(await task(a, "Plan v2").locator(".show-history").getAttribute("aria-expanded"), "true");
  // Closing hides it.
  await task(a, "Plan v2").locator(".show-history").click();
  assert.equal(await task(a, "Plan v2").locator(".history").isHidden(), true);
  assert.deepEqual(a.pageErrors, []);
  await a.context().close();
});


test("search finds tasks on all my boards, marks the words, and a hit opens its board", async () => {
  const home = await newBoard("Home");
  const work = await newBoard("Work");
  await rest(gw1.url, "POST", "/api/tasks", { board_id: home, title: "Feed the quokka", description: "the <b>barista</b> one" });
  await rest(gw1.url, "POST", "/api/tasks", { board_id: work, title: "Quokka release", description: "ship it" });
  await rest(gw1.url, "POST", "/api/tasks", { board_id: work, title: "Unrelated" });
  const a = await openBoard(home);
  await a.fill("#search", "quokkas");
  await a.selectOption("#search-scope", "all");
  await a.click("#search-form button[type=submit]");
  const hits = a.locator("#search-list li");
  await hits.nth(1).waitFor({ timeout: 2000 });
  assert.equal(await hits.count(), 2);
  assert.equal(await a.locator("#search-count").textContent(), "2");
  assert.equal(await a.locator("#search-list mark").count(), 2);
  for (const m of await a.locator("#search-list mark").allTextContents()) assert.match(m, /^quokka$/i);
  // The other board's hit opens that board.
  await a.locator("#search-list .hit", { hasText: "release" }).click();
  await a.waitForFunction((b) => location.hash === `#board=${b}`, work);
  await task(a, "Quokka release").waitFor({ timeout: 2000 });
  assert.equal(await a.locator("#board-id").inputValue(), String(work));
  // This board only (now Work): the barista is on Home; markup in user text stays text.
  await a.fill("#search", "barista");
  await a.selectOption("#search-scope", "board");
  await a.click("#search-form button[type=submit]");
  await a.locator("#search-list li", { hasText: "Nothing found." }).waitFor({ timeout: 2000 });
  await a.selectOption("#search-scope", "all");
  await a.click("#search-form button[type=submit]");
  await a.locator("#search-list .snippet", { hasText: "<b>" }).waitFor({ timeout: 2000 });
  assert.equal(await a.locator("#search-list b").count(), 0);
  // Empty search: said in words.
  await a.fill("#search", " ");
  await a.click("#search-form button[type=submit]");
  assert.match(await a.locator("#error").textContent(), /search for/);
  assert.deepEqual(a.pageErrors, []);
  await a.context().close();
});

test("a board renamed, archived and deleted in one page changes live in the other", async () => {
  const board = await newBoard("Launch");
  const a = await openBoard(board);
  const b = await openBoard(board);
  await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title: "Press kit" });
  await task(b, "Press kit").waitFor({ timeout: 1000 });
  assert.equal(await b.locator("#board-title").textContent(), "Launch");

  // Rename inline in A.
  await a.click("#board-rename");
  await a.fill(".board-bar input", "Launch day");
  await a.keyboard.press("Enter");
  await b.locator("#board-title", { hasText: "Launch day" }).waitFor({ timeout: 1000 });
  assert.equal(await b.title(), "Launch day · Taskboard");

  // Archive: B becomes read-only; unarchive: writable again.
  await a.click("#board-archive");
  await b.locator("#board-note", { hasText: "archived" }).waitFor({ timeout: 1000 });
  assert.equal(await b.locator("#create-form button[type=submit]").isDisabled(), true);
  assert.equal(await task(b, "Press kit").locator(".toggle").isDisabled(), true);
  assert.equal(await a.locator("#board-archive").textContent(), "Unarchive");
  await a.click("#board-archive");
  await b.locator("#board-note").waitFor({ state: "hidden", timeout: 1000 });
  assert.equal(await b.locator("#create-form button[type=submit]").isDisabled(), false);

  // Delete takes two clicks; B is told, and its tasks are gone.
  await a.click("#board-delete");
  assert.match(await a.locator("#board-delete").textContent(), /Really/);
  await a.click("#board-delete");
  await b.locator("#board-note", { hasText: "deleted" }).waitFor({ timeout: 1000 });
  assert.equal(await b.locator(".task").count(), 0);
  assert.equal(await b.locator("#create-form button[type=submit]").isDisabled(), true);
  const r = await fetch(`${gw1.url}/api/boards/${board}`, { headers: { Authorization: `Bearer ${OWNER}` } });
  assert.equal(r.status, 404);
  assert.deepEqual(a.pageErrors, []);
  assert.deepEqual(b.pageErrors, []);
  await a.context().close();
  await b.context().close();
});

test("tasks are assigned, given due dates, filtered, and dragged into a manual order", async () => {
  const board = await newBoard("Kanban");
  const a = await openBoard(board);
  const b = await openBoard(board);
  for (const title of ["First", "Second", "Third"]) {
    await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title });
  }
  await task(b, "First").waitFor({ timeout: 1000 });
  for (const p of [a, b]) await p.selectOption("#sort", "position");
  const order = (p) => p.locator("#open-list .task .title").allTextContents();
  assert.deepEqual(await order(b), ["Third", "Second", "First"]);

  // Drag First above Third in A: both pages show the new order.
  await a.locator(".task", { hasText: "First" }).dragTo(a.locator(".task", { hasText: "Third" }), { sourcePosition: { x: 3, y: 3 }, targetPosition: { x: 3, y: 3 } });
  await b.waitForFunction(() => [...document.querySelectorAll("#open-list .task .title")].map((e) => e.textContent).join() === "First,Third,Second");
  // Alt+↓ in B moves Third below Second.
  await task(b, "Third").focus();
  await b.keyboard.press("Alt+ArrowDown");
  await a.waitForFunction(() => [...document.querySelectorAll("#open-list .task .title")].map((e) => e.textContent).join() === "First,Second,Third");

  // Assign Second to me in A; B shows it and its filter finds it.
  await task(a, "Second").locator(".assign").click();
  await task(b, "Second").locator(".who-on", { hasText: "@you" }).waitFor({ timeout: 1000 });
  assert.equal(await task(b, "Second").locator(".assign").textContent(), "Unassign");
  await b.selectOption("#filter-assignee", "me");
  assert.deepEqual(await order(b), ["Second"]);
  await b.selectOption("#filter-assignee", "none");
  assert.deepEqual(await order(b), ["First", "Third"]);
  await b.selectOption("#filter-assignee", "");

  // A due date set in A shows in B, and sorting by due date puts it first.
  await task(a, "Third").locator(".due").fill("2030-05-06");
  await task(b, "Third").locator(".due-label", { hasText: "due" }).waitFor({ timeout: 1000 });
  assert.equal(await task(b, "Third").locator(".due").inputValue(), "2030-05-06");
  await b.selectOption("#sort", "due");
  assert.deepEqual(await order(b), ["Third", "First", "Second"]);
  await b.fill("#filter-due", "2030-01-01");
  await b.locator("#filter-due").dispatchEvent("change");
  assert.deepEqual(await order(b), []);
  // Cleared in B: gone in A.
  await b.fill("#filter-due", "");
  await b.locator("#filter-due").dispatchEvent("change");
  await task(b, "Third").locator(".due").fill("");
  await a.waitForFunction(() => {
    const li = [...document.querySelectorAll(".task")].find((e) => e.querySelector(".title").textContent === "Third");
    return li && li.querySelector(".due-label").textContent === "";
  });
  const r = await rest(gw1.url, "GET", `/api/tasks?board_id=${board}&sort=position`);
  assert.deepEqual(r.tasks.map((t) => t.title), ["First", "Second", "Third"]);
  assert.equal(r.tasks[1].assignee, 1);
  assert.equal(r.tasks[2].due_at, null);
  assert.deepEqual(a.pageErrors, []);
  assert.deepEqual(b.pageErrors, []);
  await a.context().close();
  await b.context().close();
});

test("the people viewing a board are shown, and leave when they close it", async () => {
  const board = await newBoard("Together");
  await rest(gw1.url, "PUT", `/api/boards/${board}/members/2`, { role: "viewer" });
  const a = await openBoard(board);
  await a.locator("#viewers li", { hasText: "you" }).waitFor({ timeout: 2000 });
  // Someone else opens it through the other gateway replica.
  const b = await openBoard(board, undefined, gw2, tokenFor(2));
  await a.locator("#viewers li", { hasText: "U2" }).waitFor({ timeout: 3000 });
  // B learns of A through presence on its own gateway: eventually, not at the instant A sees B.
  await b.locator("#viewers li", { hasText: "U1" }).waitFor({ timeout: 3000 });
  assert.deepEqual(await b.locator("#viewers li").allTextContents(), ["you", "U1"]);
  assert.match(await a.locator("#viewers").getAttribute("aria-label"), /you, user 2/);
  await b.context().close();
  await a.locator("#viewers li", { hasText: "U2" }).waitFor({ state: "detached", timeout: 3000 });
  assert.deepEqual(await a.locator("#viewers li").allTextContents(), ["you"]);
  assert.deepEqual(a.pageErrors, []);
  await a.context().close();
});

/// A TCP proxy to `port` that refuses connections until opened (a task service that is down).
async function gatedProxy(port) {
  let open = false;
  const server = net.createServer((client) => {
    if (!open) { client.destroy(); return; }
    const upstream = net.connect(port, "127.0.0.1");
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { port: server.address().port, open: () => { open = true; }, close: () => server.close() };
}

test("while the task service is down the page says so, and it recovers by itself", async () => {
  const board = await newBoard("Resilient");
  await rest(gw1.url, "POST", "/api/tasks", { board_id: board, title: "Survives an outage" });
  const proxy = await gatedProxy(tasksPort);
  const port = await freePort();
  // A gateway of its own whose task service is unreachable (fast breaker for the test).
  const proc = start("taskboard-gateway", {
    HTTP_PORT: String(port), BIND_ADDR: "127.0.0.1", TASK_SERVICE_ADDR: `127.0.0.1:${proxy.port}`,
    NATS_URL: NATS, NATS_SUBJECT_PREFIX: unique, JWT_SECRET, SERVICE_TOKEN,
    BREAKER_FAILURES: "2", BREAKER_OPEN_MS: "500",
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try { if ((await fetch(`${url}/health`)).ok) break; } catch { /* not up yet */ }
    if (i > 200) throw new Error("gateway never answered /health");
    await new Promise((r) => setTimeout(r, 50));
  }
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${url}/#board=${board}&token=${OWNER}`);
  await page.locator("#error", { hasText: "Task service unavailable" }).waitFor({ timeout: 5000 });
  assert.notEqual(await page.locator("#conn").textContent(), "connected");
  // The task service is reachable again: the page loads the board without being touched.
  proxy.open();
  await task(page, "Survives an outage").waitFor({ timeout: 20000 });
  await page.locator("#conn", { hasText: "connected" }).waitFor({ timeout: 5000 });
  assert.equal(await page.locator("#error").isHidden(), true);
  assert.deepEqual(errors, []);
  await ctx.close();
  await stop(proc);
  proxy.close();
});
