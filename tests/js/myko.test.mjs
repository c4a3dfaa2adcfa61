// myko.js against a real daphne (started by tests/system/test_js_client.py, which passes its
// WebSocket URL as MYKO_URL): node --test tests/js/
// Node 20 has no global WebSocket: the ws package (package.json, pinned) stands in for the
// browser's. Each test uses ids of its own, so the tests share one server. MYKO_PROTOCOL
// (json or cbor) is the format the clients speak; the Python test runs both.

import assert from "node:assert/strict";
import net from "node:net";
import { after, test } from "node:test";
import WebSocket from "ws";

import {
  Client,
  ClientClosed,
  CommandFailed,
  ConnectionLost,
  LiveQuery,
  QueryFailed,
  ReportFailed,
  State,
  connect,
  defaultUrl,
} from "../../myko_django/static/myko/myko.js";

const URL_ = process.env.MYKO_URL;
if (!URL_) throw new Error("MYKO_URL is not set: run these through tests/system/test_js_client.py");
// An access token of a user (sent as ?access_token=): the server deduplicates an anonymous
// connection's commands within that connection only, a user's on every connection.
const TOKEN = process.env.MYKO_TOKEN;
if (!TOKEN) throw new Error("MYKO_TOKEN is not set: run these through tests/system/test_js_client.py");
const TIMEOUT = 10_000;
const PROTOCOL = process.env.MYKO_PROTOCOL ?? "json";
const FAST = { WebSocket, backoff: [20, 200], protocol: PROTOCOL };
const clients = [];
const relays = [];

async function open(url = URL_, options = {}) {
  const client = await connect(url, { ...FAST, ...options });
  clients.push(client);
  return client;
}

after(() => {
  for (const client of clients) client.close();
  for (const relay of relays) relay.close();
});

/** Wait until `predicate()` is truthy; fails after TIMEOUT ms with `what`. */
async function until(predicate, what) {
  const deadline = Date.now() + TIMEOUT;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

let counter = 0;
function uid(prefix) {
  counter += 1;
  return `${prefix}-${process.pid}-${Date.now()}-${counter}`;
}

/** A TCP proxy in front of daphne that a test can cut (both ways), hold down (refuse new
 * connections) or mute (drop what the server sends), to stage network failures. */
async function proxy(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const state = { down: false, muted: false };
  const server = net.createServer((client) => {
    if (state.down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client).add(upstream);
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (!state.muted) client.write(data);
    });
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      a.on("close", () => {
        sockets.delete(a);
        b.destroy();
      });
      a.on("error", () => {});
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const path = new URL(target).pathname;
  const relay = {
    url: `ws://127.0.0.1:${server.address().port}${path}`,
    state,
    cut() {
      for (const socket of sockets) socket.destroy();
    },
    close() {
      this.cut();
      if (server.listening) server.close();
    },
  };
  relays.push(relay);
  return relay;
}

// ---- queries, reports, commands ----------------------------------------------------------

test("a live query gets its snapshot, then each change, into a Map", async () => {
  const client = await open();
  const category = uid("cat");
  // A command is answered after it committed (an event is not answered at all).
  await client.command("CreateTarget", { name: "A", category });
  const query = client.query("GetTargetsByQuery", "Target", { category });
  const items = await query.ready();
  assert.ok(query instanceof LiveQuery);
  assert.ok(items instanceof Map);
  assert.equal(items.size, 1);
  const [[aId, a]] = items;
  assert.equal(a.name, "A");
  assert.equal(query.totalCount, 1);
  assert.equal(query.sequence, 0);

  const seen = [];
  query.on("change", (current) => seen.push([...current.values()].map((t) => t.name).sort()));
  await client.set("Target", { id: `${category}-b`, name: "B", category });
  await until(() => query.items.size === 2, "the second Target");
  // Read-your-writes: the command's response comes after the updates it caused.
  assert.equal(await client.command("RenameTarget", { id: aId, name: "A2" }), null);
  assert.equal(query.items.get(aId).name, "A2");
  await client.command("DeleteTarget", { id: `${category}-b` });
  assert.deepEqual([...query.items.keys()], [aId]);
  assert.equal(query.totalCount, 1);
  assert.deepEqual(seen.at(-1), ["A2"]);
  assert.ok(query.sequence >= 3, `sequence ${query.sequence}`);
});

test("descriptor objects (what myko_typegen generates) work for queries, reports, commands", async () => {
  const client = await open();
  const category = uid("desc");
  const query = client.query({ queryId: "GetTargetsByQuery", queryItemType: "Target", params: { category } });
  const count = client.report({ reportId: "CountTargets", params: { category } });
  await query.ready();
  assert.deepEqual(await count.ready(), { count: 0 });
  const created = await client.command({ commandId: "CreateTarget", params: { name: "made", category } });
  assert.equal(typeof created.id, "string");
  assert.equal(query.items.get(created.id).name, "made");
  assert.deepEqual(count.value, { count: 1 });
});

test("a live report follows its value", async () => {
  const client = await open();
  const category = uid("rep");
  const report = client.report("CountTargets", { category });
  assert.deepEqual(await report.ready(), { count: 0 });
  const values = [];
  report.on("change", (value) => values.push(value.count));
  await client.command("CreateTarget", { name: "x", category });
  await client.command("CreateTarget", { name: "y", category });
  assert.deepEqual(report.value, { count: 2 });
  assert.deepEqual(values, [1, 2]);
});

test("a command that fails rejects with the server's message", async () => {
  const client = await open();
  await assert.rejects(client.command("RenameTarget", { id: "no-such-target", name: "x" }), (error) => {
    assert.ok(error instanceof CommandFailed && error instanceof Error);
    assert.equal(error.message, "Target not found: no-such-target");
    assert.equal(error.commandId, "RenameTarget");
    assert.equal(typeof error.tx, "string");
    return true;
  });
  await assert.rejects(client.command("NoSuchCommand"), { message: "Command handler not found: NoSuchCommand" });
  // Refused before anything is sent: reserved keys and a tx already waiting.
  await assert.rejects(client.command("RenameTarget", { id: "a", name: "b", tx: "t" }), {
    name: "TypeError",
    message: "tx is reserved by the protocol, not a parameter",
  });
});

test("a command's tx is its idempotency key: the same tx twice runs once", async () => {
  const client = await open();
  const category = uid("idem");
  const tx = uid("tx");
  const first = await client.command("CreateTarget", { name: "once", category }, { tx });
  const second = await client.command("CreateTarget", { name: "once", category }, { tx });
  assert.deepEqual(second, first);
  const query = client.query("GetTargetsByQuery", "Target", { category });
  assert.equal((await query.ready()).size, 1);
});

test("query and report errors reject ready() and reach the error listeners", async () => {
  const client = await open();
  const query = client.query("GetNothing", "Target");
  const errors = [];
  query.on("error", (error) => errors.push(error));
  await assert.rejects(query.ready(), (error) => {
    assert.ok(error instanceof QueryFailed);
    assert.equal(error.message, "Query handler not found: GetNothing");
    assert.equal(error.queryId, "GetNothing");
    return true;
  });
  assert.equal(errors.length, 1);
  await assert.rejects(client.query("GetTargetsByQuery", "Target", { colour: "red" }).ready(), QueryFailed);
  await assert.rejects(client.report("NoReport").ready(), (error) => {
    assert.ok(error instanceof ReportFailed);
    assert.equal(error.message, "Report handler not found: NoReport");
    return true;
  });
});

// ---- windows -----------------------------------------------------------------------------

test("a windowed query holds one page in order; setWindow moves it, clearWindow removes it", async () => {
  const client = await open();
  const category = uid("win");
  const ids = Array.from({ length: 7 }, (_, i) => `${category}-${i}`);
  await client.sendEvents(ids.map((id) => ({ item: { id, name: id, category }, changeType: "SET", itemType: "Target" })));
  const query = client.query("GetTargetsByQuery", "Target", { category }, { window: { offset: 0, limit: 3 } });
  await until(() => query.totalCount === 7, "all seven Targets");
  assert.deepEqual(query.order, ids.slice(0, 3));
  assert.deepEqual(query.list().map((t) => t.id), ids.slice(0, 3));

  query.setWindow({ offset: 3, limit: 3 });
  await until(() => query.order?.[0] === ids[3], "the second page");
  assert.deepEqual([...query.items.keys()], ids.slice(3, 6));

  // A row deleted from the page is replaced by the next one; the count follows.
  await client.delete("Target", ids[4]);
  await until(() => query.totalCount === 6, "the delete");
  assert.deepEqual(query.list().map((t) => t.id), [ids[3], ids[5], ids[6]]);

  query.clearWindow();
  await until(() => query.items.size === 6, "the whole result");
  assert.equal(query.order, null);
  assert.equal(query.window, null);
  assert.deepEqual(query.list().map((t) => t.id), ids.filter((id) => id !== ids[4]));

  assert.throws(() => query.setWindow({ offset: -1, limit: 3 }), {
    name: "TypeError",
    message: "window offset must be a non-negative integer below 2**63, got -1",
  });
  assert.throws(() => client.query("GetAllTargets", "Target", {}, { window: { offset: 0 } }), TypeError);
});

// ---- cancel, iteration, events, ping -----------------------------------------------------

test("cancel stops updates and ends async iteration", async () => {
  const client = await open();
  const category = uid("cancel");
  const query = client.query("GetTargetsByQuery", "Target", { category });
  const snapshots = [];
  const iterating = (async () => {
    for await (const items of query) {
      snapshots.push(items.size);
      if (items.size === 1) query.cancel();
    }
  })();
  await query.ready();
  await client.set("Target", { id: `${category}-1`, name: "one", category });
  await iterating; // ended by the cancel
  assert.deepEqual(snapshots.slice(-1), [1]);
  const sequence = query.sequence;
  await client.set("Target", { id: `${category}-2`, name: "two", category });
  await client.ping(); // anything still on its way for the query has arrived by now
  assert.equal(query.sequence, sequence);
  assert.equal(query.items.size, 1);
  assert.ok(query.ended);
});

test("client events: SET and DEL change the result; a refused one comes back as event-error", async () => {
  const client = await open();
  const category = uid("ev");
  const query = client.query("GetTargetsByQuery", "Target", { category });
  await query.ready();
  const tx = await client.set("Target", { id: `${category}-1`, name: "one", category });
  assert.equal(typeof tx, "string");
  await until(() => query.items.has(`${category}-1`), "the SET");
  await client.delete("Target", `${category}-1`);
  await until(() => query.items.size === 0, "the DEL");

  const refused = [];
  client.on("event-error", (data) => refused.push(data));
  const badTx = await client.set("Target", { id: `${category}-2`, name: 5, category });
  await until(() => refused.length === 1, "the event-error");
  assert.equal(refused[0].tx, badTx);
  assert.equal(refused[0].itemType, "Target");
  assert.match(refused[0].message, /name/);
  assert.deepEqual(client.eventErrors, refused);
  await assert.rejects(client.set("Target", { name: "no id" }), TypeError);
});

test("ping measures a round trip in milliseconds", async () => {
  const client = await open();
  const ms = await client.ping();
  assert.equal(typeof ms, "number");
  assert.ok(ms > 0 && ms < TIMEOUT, `${ms} ms`);
});

test("values travel exactly: text, floats, nested JSON; big integers as BigInt in CBOR", async () => {
  const client = await open();
  const id = uid("gadget");
  const watch = client.query("GetGadgetsByIds", "Gadget", { ids: [id] });
  await watch.ready();
  const extra = { text: "ünïcødé ✓ 𝄞", float: 1.5, tiny: 5e-324, list: [1, -2, null, true, { deep: [] }] };
  await client.set("Gadget", { id, label: "g", count: -70000, ratio: 0.1, extra });
  await until(() => watch.items.has(id), "the Gadget");
  const gadget = watch.items.get(id);
  assert.deepEqual(gadget.extra, extra);
  assert.equal(gadget.count, -70000);
  assert.equal(gadget.ratio, 0.1);

  const big = { max: 2n ** 64n - 1n, min: -(2n ** 63n), safe: 2 ** 53 - 1 };
  if (PROTOCOL === "cbor") {
    await client.set("Gadget", { id, label: "g", extra: big });
    await until(() => typeof watch.items.get(id).extra?.max === "bigint", "the big integers");
    assert.deepEqual(watch.items.get(id).extra, big);
  } else {
    // JSON cannot carry a BigInt (docs/protocol.md, "Large integers"): refused before sending.
    await assert.rejects(client.set("Gadget", { id, label: "g", extra: big }), TypeError);
  }
});

// ---- connection state, reconnect, re-subscribe, re-send -----------------------------------

test("state events: connecting, open, closed; close() ends what waits", async () => {
  const states = [];
  const client = new Client(URL_, { ...FAST, onState: (state) => states.push(state) });
  assert.equal(client.state, State.CONNECTING);
  await client.open();
  assert.equal(client.state, State.OPEN);
  const query = client.query("GetTargetsByIds", "Target", { ids: [] });
  await query.ready();
  const iterating = (async () => {
    for await (const _ of query);
  })();
  client.close();
  await iterating; // ends quietly
  assert.deepEqual(states, [State.OPEN, State.CLOSED]);
  assert.throws(() => client.query("GetAllTargets", "Target"), ClientClosed);
  await assert.rejects(client.command("RenameTarget", { id: "x", name: "y" }), ClientClosed);
  const early = new Client(URL_, FAST);
  const opening = early.open();
  early.close(); // before the socket opened
  await assert.rejects(opening, ClientClosed);
});

test("connect() to a server that is not there rejects with ConnectionLost", async () => {
  const dead = net.createServer();
  await new Promise((resolve) => dead.listen(0, "127.0.0.1", resolve));
  const port = dead.address().port;
  await new Promise((resolve) => dead.close(resolve));
  await assert.rejects(connect(`ws://127.0.0.1:${port}/myko`, FAST), ConnectionLost);
  assert.throws(() => new Client(URL_, { WebSocket, backoff: [0, 1] }), {
    message: "backoff must be [initialMs, maximumMs] with 0 < initialMs <= maximumMs",
  });
});

test("after a drop the client reconnects, re-subscribes with the same tx and shows what changed meanwhile", async () => {
  const relay = await proxy(URL_);
  const states = [];
  const client = await open(relay.url, { onState: (state) => states.push(state) });
  const direct = await open();
  const category = uid("re");
  await direct.set("Target", { id: `${category}-1`, name: "before", category });
  const query = client.query("GetTargetsByQuery", "Target", { category });
  const count = client.report("CountTargets", { category });
  await until(() => query.items.get(`${category}-1`)?.name === "before", "the first result");
  await count.ready();
  const [queryTx, reportTx] = [query.tx, count.tx];

  relay.state.down = true;
  relay.cut();
  await until(() => client.state === State.RECONNECTING, "the drop to be noticed");
  // Changed while the client is away; a command issued meanwhile waits for the socket.
  await direct.command("RenameTarget", { id: `${category}-1`, name: "while away" });
  await direct.set("Target", { id: `${category}-2`, name: "new", category });
  const pending = client.command("CreateTarget", { name: "queued", category });
  await new Promise((resolve) => setTimeout(resolve, 100)); // a few refused attempts
  relay.state.down = false;

  const created = await pending;
  await until(() => query.items.size === 3, "the re-subscribed result");
  assert.equal(query.items.get(`${category}-1`).name, "while away");
  assert.equal(query.items.get(created.id).name, "queued");
  assert.deepEqual(count.value, { count: 3 });
  assert.equal(query.tx, queryTx);
  assert.equal(count.tx, reportTx);
  assert.equal(client.reconnects, 1);
  assert.deepEqual(states, [State.OPEN, State.RECONNECTING, State.OPEN]);
  relay.close();
});

test("a command whose answer was lost is re-sent with its tx: it runs once, the stored response answers", async () => {
  const relay = await proxy(URL_);
  const client = await open(relay.url, { token: TOKEN }); // a user's commands: deduplicated across connections
  const direct = await open();
  const category = uid("resend");
  const watch = direct.query("GetTargetsByQuery", "Target", { category });
  await watch.ready();

  relay.state.muted = true; // the server hears the command, its answer never arrives
  let answered = false;
  const pending = client.command("CreateTarget", { name: "exactly once", category }).then((result) => {
    answered = true;
    return result;
  });
  await until(() => watch.items.size === 1, "the command to run on the server");
  assert.equal(answered, false);
  relay.state.muted = false;
  relay.cut();

  const result = await pending;
  const [id] = watch.items.keys();
  assert.deepEqual(result, { id }); // the stored response of the first run
  await direct.ping();
  assert.equal(watch.items.size, 1); // not created twice
  assert.equal(client.reconnects, 1);
  relay.close();
});

// ---- pieces without a server --------------------------------------------------------------

test("a response split into parts (`more`) is applied as one: ready and change after the last", async () => {
  // A scripted peer on a real socket: it answers the query with two parts, then one more
  // ordinary response.
  const { WebSocketServer } = await import("ws");
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((resolve) => server.once("listening", resolve));
  server.on("connection", (socket) => {
    socket.on("message", (frame) => {
      const { event, data } = JSON.parse(String(frame));
      if (event !== "ws:m:query") return;
      const tx = data.query.tx;
      const item = (id) => ({ item: { id, name: id }, itemType: "Target" });
      const send = (response) =>
        socket.send(JSON.stringify({ event: "ws:m:query-response", data: { tx, deletes: [], totalCount: 3, ...response } }));
      send({ sequence: 0, upserts: [item("a"), item("b")], more: true });
      setTimeout(() => send({ sequence: 1, upserts: [item("c")] }), 200);
      setTimeout(() => send({ sequence: 2, upserts: [], deletes: ["b"], totalCount: 2 }), 400);
    });
  });
  try {
    const client = await open(`ws://127.0.0.1:${server.address().port}/myko`, { protocol: "json" });
    const query = client.query("GetAllTargets", "Target");
    const seen = [];
    query.on("change", (items) => seen.push([...items.keys()].sort().join()));
    await until(() => query.items.size === 2, "the first part");
    assert.equal(query.received, false); // not ready on a part
    assert.deepEqual(seen, []);
    const items = await query.ready();
    assert.deepEqual([...items.keys()].sort(), ["a", "b", "c"]); // not "a,b" from the first part
    await until(() => seen.length === 2, "the update after the parts");
    assert.deepEqual(seen, ["a,b,c", "a,c"]);
    assert.equal(query.totalCount, 2);
    client.close();
  } finally {
    for (const socket of server.clients) socket.terminate();
    server.close();
  }
});

test("defaultUrl() is ws: or wss: as the page, on its host, at /myko", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "location");
  try {
    globalThis.location = { protocol: "https:", host: "app.example.com:8443" };
    assert.equal(defaultUrl(), "wss://app.example.com:8443/myko");
    globalThis.location = { protocol: "http:", host: "127.0.0.1:8000" };
    assert.equal(defaultUrl(), "ws://127.0.0.1:8000/myko");
    assert.equal(defaultUrl("/ws"), "ws://127.0.0.1:8000/ws");
  } finally {
    if (saved) Object.defineProperty(globalThis, "location", saved);
    else delete globalThis.location;
  }
  assert.throws(() => defaultUrl(), TypeError);
});
