// myko.js: a browser (and Node) client for the myko protocol as myko-django serves it
// (docs/protocol.md). One ES module, no build step, no dependency: a Django template
// loads it with <script type="module">. The same semantics as the Python client
// (myko_django/client/api.py): one WebSocket that reconnects with back-off; live queries,
// windows and reports that re-subscribe with their tx after a reconnect (a fresh sequence
// 0 replaces the local state); commands re-sent with their tx until answered (the
// server's idempotency returns the stored response of one that already ran). JSON text
// frames by default, CBOR binary frames on request (a small codec below, no library).

const RESERVED_KEYS = ["tx", "createdAt", "seq", "userToken"];
const MAX_WINDOW = 2 ** 63;

/** The states a client goes through; `client.state` and the "state" event carry them. */
export const State = Object.freeze({
  CONNECTING: "connecting", // the first connection is being made
  OPEN: "open", // connected: messages flow
  RECONNECTING: "reconnecting", // the socket dropped; retrying with back-off
  CLOSED: "closed", // for good: close() was called, or reconnecting is off
});

/** Base of the errors this module rejects with. */
export class MykoError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** The server answered a command with ws:m:command-error; `message` is the server's. */
export class CommandFailed extends MykoError {
  constructor(message, { commandId = null, tx = null } = {}) {
    super(message);
    this.commandId = commandId;
    this.tx = tx;
  }
}

/** The server answered a query (or a window change) with ws:m:query-error. */
export class QueryFailed extends MykoError {
  constructor(message, { queryId = null, tx = null } = {}) {
    super(message);
    this.queryId = queryId;
    this.tx = tx;
  }
}

/** The server answered a report with ws:m:report-error. */
export class ReportFailed extends MykoError {
  constructor(message, { reportId = null, tx = null } = {}) {
    super(message);
    this.reportId = reportId;
    this.tx = tx;
  }
}

/** The client was closed by its user while this operation waited. */
export class ClientClosed extends MykoError {}

/** The socket dropped and the client does not reconnect (or a ping was in flight). */
export class ConnectionLost extends MykoError {}

/** The WebSocket URL of the myko endpoint on the server that served this page:
 * ws: for http: pages, wss: for https: pages, the page's host and port, `path`. */
export function defaultUrl(path = "/myko") {
  const loc = globalThis.location;
  if (!loc) throw new TypeError("no page location here: pass the server's ws:// URL");
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}${path}`;
}

function newTx() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  // Pages served over plain http from another host than localhost lack randomUUID.
  const bytes = new Uint8Array(16);
  c.getRandomValues(bytes);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function now() {
  return new Date().toISOString();
}

function checkParams(params) {
  if (params == null) return {};
  if (typeof params !== "object" || Array.isArray(params)) {
    throw new TypeError(`parameters must be an object, got ${JSON.stringify(params)}`);
  }
  const reserved = RESERVED_KEYS.filter((key) => Object.hasOwn(params, key)).sort();
  if (reserved.length) {
    throw new TypeError(`${reserved.join(", ")} is reserved by the protocol, not a parameter`);
  }
  return { ...params };
}

function checkWindow(window) {
  if (window == null) return null;
  if (typeof window !== "object" || Array.isArray(window)) {
    throw new TypeError(`window must be an object {offset, limit} or null, got ${JSON.stringify(window)}`);
  }
  const offset = window.offset ?? 0;
  for (const [name, v] of [["offset", offset], ["limit", window.limit]]) {
    if (!Number.isInteger(v) || v < 0 || v >= MAX_WINDOW) {
      throw new TypeError(`window ${name} must be a non-negative integer below 2**63, got ${JSON.stringify(v)}`);
    }
  }
  return { offset, limit: window.limit };
}

// ---- CBOR (docs/protocol.md, "Formats") ---------------------------------------------------
// The subset the server reads and writes: maps with text keys, arrays, text, integers,
// floats, booleans and null; no tags, no byte strings. Integers beyond 2**53 decode as
// BigInt (exact), smaller ones as numbers; a BigInt is sent as a CBOR integer.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });
const MAX_DEPTH = 100;

class CborWriter {
  constructor() {
    this.buffer = new Uint8Array(256);
    this.view = new DataView(this.buffer.buffer);
    this.length = 0;
  }

  reserve(n) {
    if (this.length + n <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buffer.subarray(0, this.length));
    this.buffer = bigger;
    this.view = new DataView(bigger.buffer);
  }

  byte(b) {
    this.reserve(1);
    this.buffer[this.length++] = b;
  }

  head(major, n) {
    // n: a non-negative number (safe integer) or BigInt below 2**64, in its shortest form.
    const top = major << 5;
    if (typeof n === "bigint" && n <= BigInt(Number.MAX_SAFE_INTEGER)) n = Number(n);
    if (typeof n === "bigint") {
      if (n >= 2n ** 64n) throw new RangeError(`integer ${n} does not fit 64 bits`);
      this.byte(top | 27);
      this.reserve(8);
      this.view.setBigUint64(this.length, n);
      this.length += 8;
    } else if (n < 24) this.byte(top | n);
    else if (n < 0x100) {
      this.byte(top | 24);
      this.byte(n);
    } else if (n < 0x10000) {
      this.byte(top | 25);
      this.reserve(2);
      this.view.setUint16(this.length, n);
      this.length += 2;
    } else if (n < 0x100000000) {
      this.byte(top | 26);
      this.reserve(4);
      this.view.setUint32(this.length, n);
      this.length += 4;
    } else {
      this.byte(top | 27);
      this.reserve(8);
      this.view.setBigUint64(this.length, BigInt(n));
      this.length += 8;
    }
  }

  value(v, depth = 0) {
    if (depth > MAX_DEPTH) throw new RangeError(`a message nests deeper than ${MAX_DEPTH} levels`);
    if (v === null || v === undefined) return this.byte(0xf6);
    if (v === false) return this.byte(0xf4);
    if (v === true) return this.byte(0xf5);
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw new TypeError(`${v} cannot be sent (the server refuses it)`);
      if (Number.isSafeInteger(v)) return v >= 0 ? this.head(0, v) : this.head(1, -1 - v);
      this.byte(0xfb);
      this.reserve(8);
      this.view.setFloat64(this.length, v);
      this.length += 8;
      return;
    }
    if (typeof v === "bigint") return v >= 0n ? this.head(0, v) : this.head(1, -1n - v);
    if (typeof v === "string") {
      const bytes = utf8.encode(v);
      this.head(3, bytes.length);
      this.reserve(bytes.length);
      this.buffer.set(bytes, this.length);
      this.length += bytes.length;
      return;
    }
    if (Array.isArray(v)) {
      this.head(4, v.length);
      for (const item of v) this.value(typeof item === "function" ? null : item, depth + 1);
      return;
    }
    if (typeof v === "object") {
      if (typeof v.toJSON === "function") return this.value(v.toJSON(), depth); // a Date, as JSON
      if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) throw new TypeError("byte strings cannot be sent");
      // As JSON.stringify: undefined and functions are left out.
      const entries = Object.entries(v).filter(([, x]) => x !== undefined && typeof x !== "function");
      this.head(5, entries.length);
      for (const [key, x] of entries) {
        this.value(key, depth + 1);
        this.value(x, depth + 1);
      }
      return;
    }
    throw new TypeError(`a ${typeof v} cannot be sent`);
  }
}

function halfFloat(bits) {
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  const sign = bits & 0x8000 ? -1 : 1;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

class CborReader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }

  need(n) {
    if (this.at + n > this.bytes.length) throw new SyntaxError("CBOR frame ends inside an item");
  }

  argument(info) {
    if (info < 24) return info;
    const size = { 24: 1, 25: 2, 26: 4, 27: 8 }[info];
    if (!size) throw new SyntaxError(`CBOR: unsupported header (additional info ${info})`);
    this.need(size);
    const at = this.at;
    this.at += size;
    if (size === 1) return this.view.getUint8(at);
    if (size === 2) return this.view.getUint16(at);
    if (size === 4) return this.view.getUint32(at);
    const big = this.view.getBigUint64(at);
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  value(depth = 0) {
    if (depth > MAX_DEPTH) throw new SyntaxError(`CBOR nests deeper than ${MAX_DEPTH} levels`);
    this.need(1);
    const initial = this.bytes[this.at++];
    const major = initial >> 5;
    const info = initial & 0x1f;
    if (major === 7) {
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22 || info === 23) return null;
      const size = { 25: 2, 26: 4, 27: 8 }[info];
      if (!size) throw new SyntaxError(`CBOR: unsupported simple value ${info}`);
      this.need(size);
      const at = this.at;
      this.at += size;
      if (size === 2) return halfFloat(this.view.getUint16(at));
      return size === 4 ? this.view.getFloat32(at) : this.view.getFloat64(at);
    }
    const n = this.argument(info);
    switch (major) {
      case 0:
        return n;
      case 1:
        if (typeof n === "bigint") return -1n - n;
        return -1 - n < Number.MIN_SAFE_INTEGER ? -1n - BigInt(n) : -1 - n;
      case 2:
      case 3: {
        const length = Number(n);
        this.need(length);
        const chunk = this.bytes.subarray(this.at, this.at + length);
        this.at += length;
        return major === 3 ? fromUtf8.decode(chunk) : chunk.slice();
      }
      case 4: {
        const list = [];
        for (let i = 0; i < n; i++) list.push(this.value(depth + 1));
        return list;
      }
      case 5: {
        const map = {};
        for (let i = 0; i < n; i++) {
          const key = this.value(depth + 1);
          if (typeof key !== "string") throw new SyntaxError("CBOR: a map key that is not text");
          Object.defineProperty(map, key, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
        }
        return map;
      }
      default:
        throw new SyntaxError("CBOR: tags are not part of the protocol");
    }
  }
}

/** The CBOR codec myko.js uses with `protocol: "cbor"`: `encode(value)` gives a
 * Uint8Array, `decode(bytes)` the value (integers beyond 2**53 as BigInt). */
export const cbor = Object.freeze({
  encode(value) {
    const writer = new CborWriter();
    writer.value(value);
    return writer.buffer.slice(0, writer.length);
  },
  decode(data) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    const reader = new CborReader(bytes);
    const value = reader.value();
    if (reader.at !== bytes.length) throw new SyntaxError(`CBOR: ${bytes.length - reader.at} bytes after the message`);
    return value;
  },
});

/** Listeners by event name; `on` returns the function that removes the listener. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(name, listener) {
    if (typeof listener !== "function") throw new TypeError("a listener must be a function");
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(listener);
    return () => this.off(name, listener);
  }

  off(name, listener) {
    this._listeners.get(name)?.delete(listener);
  }

  _emit(name, ...args) {
    for (const listener of [...(this._listeners.get(name) ?? [])]) {
      try {
        listener(...args);
      } catch (error) {
        console.error(`myko: a "${name}" listener failed`, error);
      }
    }
  }
}

/** What queries and reports share: a tx, a version bumped on every response, and a
 * promise swapped on each bump so any number of waiters wake. */
class Subscription extends Emitter {
  constructor(client, kind) {
    super();
    this.client = client;
    this.kind = kind;
    this.tx = newTx();
    this.error = null;
    this.received = false; // the first response arrived
    this.ended = false; // cancelled, or the client closed
    this._version = 0;
    this._newWaiter();
  }

  _newWaiter() {
    this._changed = new Promise((resolve) => {
      this._wake = resolve;
    });
  }

  _notify() {
    this._version += 1;
    const wake = this._wake;
    this._newWaiter();
    wake();
  }

  _fail(error) {
    this.error = error;
    this._notify();
    this._emit("error", error);
  }

  _end() {
    this.ended = true;
    this._notify();
  }

  async _ready() {
    while (!this.received && !this.error && !this.ended) await this._changed;
    if (this.error) throw this.error;
    if (!this.received) throw this.client._closed ?? new MykoError(`${this.kind} ${this.tx} was cancelled`);
  }

  /** The current result once it is there, then again after each change (a slow consumer
   * skips intermediate states, never the latest); ends after cancel(). */
  async *[Symbol.asyncIterator]() {
    let seen = 0;
    while (true) {
      while (!(this.received && this._version !== seen) && !this.error && !this.ended) await this._changed;
      if (this.error) throw this.error;
      if (this.ended) return;
      seen = this._version;
      yield this._snapshot();
    }
  }

  /** Stop the subscription here and on the server; iterators finish. */
  cancel() {
    if (this.ended) return;
    this.client._subs.delete(this.tx);
    this._end();
    if (!this.client._closed) this.client._enqueue({ event: `ws:m:${this.kind}-cancel`, data: { tx: this.tx } });
  }
}

/** A live query: `items` (a Map by id) is the current result, kept by applying each
 * response; `totalCount` counts the whole result, whatever the window. */
export class LiveQuery extends Subscription {
  constructor(client, queryId, queryItemType, params, window) {
    super(client, "query");
    if (typeof queryId !== "string" || !queryId) throw new TypeError("queryId must be a non-empty string");
    this.queryId = queryId;
    this.queryItemType = queryItemType ?? null;
    this.params = checkParams(params);
    this.window = checkWindow(window);
    this.items = new Map();
    this.totalCount = null;
    this.sequence = null; // the last applied, per connection
    this.order = null; // the page's ids in order, for a windowed query
  }

  _message() {
    const data = { query: { ...this.params, tx: this.tx, createdAt: now() }, queryId: this.queryId };
    if (this.queryItemType) data.queryItemType = this.queryItemType;
    if (this.window) data.window = this.window;
    return { event: "ws:m:query", data };
  }

  _snapshot() {
    return new Map(this.items);
  }

  _apply(data) {
    const sequence = data.sequence;
    if (sequence === 0) {
      this.items = new Map();
    } else if (this.sequence === null || sequence !== this.sequence + 1) {
      console.warn(`myko: query ${this.tx} (${this.queryId}): sequence ${sequence} after ${this.sequence}`);
    }
    this.sequence = sequence;
    for (const id of data.deletes ?? []) this.items.delete(String(id));
    for (const upsert of data.upserts ?? []) this.items.set(String(upsert.item.id), upsert.item);
    if (data.window == null) this.order = null;
    for (const change of data.changes ?? []) {
      if (change && change.kind === "windowOrder") {
        this.order = (change.ids ?? []).map(String);
        const ordered = new Map();
        for (const id of this.order) if (this.items.has(id)) ordered.set(id, this.items.get(id));
        for (const [id, item] of this.items) if (!ordered.has(id)) ordered.set(id, item);
        this.items = ordered;
      }
    }
    if ("totalCount" in data) this.totalCount = data.totalCount;
    // A response too large for one message comes as parts, all but the last marked
    // `more` (docs/protocol.md, "Large results"): ready and "change" after the last.
    if (data.more === true) return;
    this.received = true;
    this._notify();
    this._emit("change", this.items, this);
  }

  /** The items as a list: in the window's order for a windowed query, else sorted by id
   * (code-point order, as the server pages). */
  list() {
    if (this.order) return this.order.filter((id) => this.items.has(id)).map((id) => this.items.get(id));
    return [...this.items.keys()].sort(codePointCompare).map((id) => this.items.get(id));
  }

  /** Wait for the first complete result (sequence 0); rejects with QueryFailed. */
  async ready() {
    await this._ready();
    return this._snapshot();
  }

  /** Move the window (or remove it with null); a reconnect re-subscribes with it. */
  setWindow(window) {
    const checked = checkWindow(window);
    if (this.error || this.ended) throw this.error ?? new MykoError(`query ${this.tx} was cancelled`);
    this.window = checked;
    this.client._enqueue({ event: "ws:m:query-window", data: { tx: this.tx, window: checked } });
  }

  /** Remove the window: the whole result from then on. */
  clearWindow() {
    this.setWindow(null);
  }
}

/** A live report: `value` is its latest value. */
export class LiveReport extends Subscription {
  constructor(client, reportId, params) {
    super(client, "report");
    if (typeof reportId !== "string" || !reportId) throw new TypeError("reportId must be a non-empty string");
    this.reportId = reportId;
    this.params = checkParams(params);
    this.value = undefined;
  }

  _message() {
    return { event: "ws:m:report", data: { report: { ...this.params, tx: this.tx }, reportId: this.reportId } };
  }

  _snapshot() {
    return this.value;
  }

  _apply(data) {
    this.value = data.response;
    this.received = true;
    this._notify();
    this._emit("change", this.value, this);
  }

  /** Wait for the first value; rejects with ReportFailed. */
  async ready() {
    await this._ready();
    return this.value;
  }
}

function codePointCompare(a, b) {
  // JavaScript compares strings by UTF-16 units; the server pages by code points.
  const x = [...a].map((c) => c.codePointAt(0));
  const y = [...b].map((c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/**
 * One logical connection to a myko server. `new Client(url, options)` then `start()` keeps
 * trying from the first attempt on (what a page wants); `connect()` resolves once the
 * first connection is open and rejects when it fails (what a program wants).
 *
 * Events (`client.on(name, listener)`, returns a function that removes it):
 * "state" (state, client), "open" (client), "close" ({code, reason}), "event-error" (data).
 */
export class Client extends Emitter {
  constructor(url = undefined, options = {}) {
    super();
    const urls = url === undefined || url === null ? [defaultUrl()] : Array.isArray(url) ? [...url] : [url];
    if (!urls.length || !urls.every((u) => typeof u === "string" && u)) {
      throw new TypeError("a client needs at least one ws:// or wss:// URL");
    }
    const {
      reconnect = true,
      backoff = [100, 5000],
      token = null,
      protocol = "json",
      WebSocket: Impl = globalThis.WebSocket,
    } = options;
    if (protocol !== "json" && protocol !== "cbor") {
      throw new TypeError(`protocol must be "json" or "cbor", not ${JSON.stringify(protocol)}`);
    }
    if (typeof Impl !== "function") {
      throw new TypeError("no WebSocket here: pass one as options.WebSocket (in Node 20: the ws package)");
    }
    if (!Array.isArray(backoff) || backoff.length !== 2 || !(backoff[0] > 0) || !(backoff[1] >= backoff[0])) {
      throw new TypeError("backoff must be [initialMs, maximumMs] with 0 < initialMs <= maximumMs");
    }
    this.urls = urls;
    this._urlIndex = 0;
    this.reconnect = reconnect;
    this.backoff = backoff;
    // Sent as ?access_token= on every (re)connect (a browser cannot set headers; a page
    // logged in to the site needs none: its session cookie names the user).
    this.token = token;
    this.WebSocket = Impl;
    // JSON text frames, or CBOR binary frames (the server answers in the format of the
    // first binary frame it reads: docs/protocol.md, "Formats").
    this.protocol = protocol;
    this.state = State.CONNECTING;
    this.reconnects = 0; // successful reconnects so far
    this.eventErrors = []; // ws:m:event-error payloads (rejected client events)
    this._ws = null;
    this._subs = new Map(); // tx -> LiveQuery | LiveReport
    this._commands = new Map(); // tx -> {commandId, message, resolve, reject}
    this._pings = new Map(); // id -> {started, resolve, reject}
    this._outbox = []; // {frame, keep, commandTx, resolve, reject}
    this._closed = null; // the error once the client is done for good
    this._started = false;
    this._everOpened = false;
    this._firstOpen = null;
    this._timer = null;
    if (options.onEventError) this.on("event-error", options.onEventError);
    if (options.onState) this.on("state", options.onState);
  }

  /** The server this client talks to now (reconnects go round the URLs it was given). */
  get url() {
    return this.urls[this._urlIndex];
  }

  get connected() {
    return this.state === State.OPEN;
  }

  _socketUrl() {
    if (!this.token) return this.url;
    const u = new URL(this.url);
    u.searchParams.set("access_token", this.token);
    return u.toString();
  }

  /** Start connecting; a failed first attempt is retried like a dropped connection. */
  start() {
    if (this._started) throw new Error("client already started");
    this._started = true;
    this._setState(State.CONNECTING);
    this._open();
    return this;
  }

  /** Resolves with this client once the first connection is open; rejects (and closes
   * the client) when that first attempt fails. */
  open() {
    if (this._started) return Promise.reject(new Error("client already started"));
    this._started = true;
    this._setState(State.CONNECTING);
    return new Promise((resolve, reject) => {
      this._firstOpen = { resolve, reject };
      this._open();
    });
  }

  /** Close for good: no reconnect; waiting commands, pings and readies reject with
   * ClientClosed, subscription iterators finish. */
  close() {
    if (this._closed) return;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    const error = new ClientClosed("client closed");
    this._failFirst(error); // an open() still waiting
    this._finish(error);
    if (ws) {
      detach(ws);
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state, this);
  }

  _open(delay = this.backoff[0]) {
    let ws;
    try {
      ws = new this.WebSocket(this._socketUrl());
    } catch (error) {
      // A malformed URL: no retry helps.
      this._failFirst(new ConnectionLost(`cannot connect to ${this.url}: ${error.message}`));
      this._finish(new ConnectionLost(`cannot connect to ${this.url}: ${error.message}`));
      return;
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => {
      opened = true;
      const first = this._firstOpen;
      this._firstOpen = null;
      const replay = Boolean(this._everOpened);
      if (replay) this.reconnects += 1;
      this._everOpened = true;
      if (replay) this._replay();
      this._setState(State.OPEN);
      this._flush();
      this._emit("open", this);
      first?.resolve(this);
    };
    ws.onmessage = (event) => this._receive(event.data);
    ws.onerror = () => {}; // a close event follows; it decides
    ws.onclose = (event) => {
      detach(ws);
      if (this._ws === ws) this._ws = null;
      if (this._closed) return;
      this._emit("close", { code: event.code, reason: event.reason });
      if (!opened && this._firstOpen) {
        const error = new ConnectionLost(`cannot connect to ${this.url} (code ${event.code})`);
        this._failFirst(error);
        this._finish(error);
        return;
      }
      if (!this.reconnect) {
        this._finish(new ConnectionLost(`connection to ${this.url} lost (code ${event.code})`));
        return;
      }
      this._failPings(new ConnectionLost("connection lost during ping"));
      this._setState(State.RECONNECTING);
      // Back-off doubles after each attempt that never opened, from backoff[0] after a
      // connection that did; jitter spreads a herd of clients over the interval.
      const wait = opened ? this.backoff[0] : delay;
      const next = opened ? this.backoff[0] * 2 : Math.min(delay * 2, this.backoff[1]);
      this._timer = setTimeout(
        () => {
          this._urlIndex = (this._urlIndex + 1) % this.urls.length; // another worker first
          this._open(next);
        },
        wait * (0.5 + Math.random() / 2),
      );
    };
  }

  _failFirst(error) {
    const first = this._firstOpen;
    this._firstOpen = null;
    first?.reject(error);
  }

  /** Done for good: fail everything waiting. Subscriptions end quietly when the user
   * closed the client, and fail with `error` when the connection was lost. */
  _finish(error) {
    if (this._closed) return;
    this._closed = error;
    this._setState(State.CLOSED);
    for (const pending of this._commands.values()) pending.reject(error);
    this._commands.clear();
    this._failPings(error);
    for (const sub of this._subs.values()) {
      if (error instanceof ClientClosed) sub._end();
      else sub._fail(error);
    }
    this._subs.clear();
    for (const entry of this._outbox) entry.reject?.(error);
    this._outbox = [];
  }

  _failPings(error) {
    for (const ping of this._pings.values()) ping.reject(error);
    this._pings.clear();
  }

  /** The new connection has none of our state. First the subscriptions (same tx, so a
   * fresh sequence 0 replaces ours), then commands sent but not answered (same tx: the
   * server's idempotency makes a re-run safe), then what was still queued, in call order
   * (so an event and a command that needs it stay in that order). */
  _replay() {
    const kept = [];
    const queued = new Set();
    for (const entry of this._outbox) {
      if (entry.keep || (entry.commandTx && this._commands.has(entry.commandTx))) {
        kept.push(entry);
        queued.add(entry.commandTx);
      } else {
        entry.resolve?.(); // a subscribe, window, cancel or ping: regenerated or moot
      }
    }
    const replay = [...this._subs.values()].map((sub) => sub._message());
    for (const [tx, pending] of this._commands) if (!queued.has(tx)) replay.push(pending.message);
    this._outbox = [...replay.map((m) => ({ frame: this._encode(m) })), ...kept];
  }

  _flush() {
    const ws = this._ws;
    while (this._outbox.length && ws && ws.readyState === 1 && this.state === State.OPEN) {
      const entry = this._outbox.shift();
      try {
        ws.send(entry.frame);
      } catch (error) {
        this._outbox.unshift(entry); // the close event follows and reconnects
        return;
      }
      entry.resolve?.();
    }
  }

  _enqueue(message, { keep = false, commandTx = null, resolve = null, reject = null } = {}) {
    if (this._closed) throw this._closed;
    this._outbox.push({ frame: this._encode(message), keep, commandTx, resolve, reject });
    this._flush();
  }

  _encode(message) {
    return this.protocol === "cbor" ? cbor.encode(message) : JSON.stringify(message);
  }

  _receive(frame) {
    // Text frames are JSON in both modes (the server answers in JSON until it has read a
    // binary frame, and its protocol-switch answer is text).
    let message;
    try {
      message = typeof frame === "string" ? JSON.parse(frame) : cbor.decode(frame);
    } catch (error) {
      console.warn("myko: ignored a frame that does not decode", error);
      return;
    }
    try {
      this._dispatch(message);
    } catch (error) {
      console.error("myko: could not handle a message", message, error);
    }
  }

  _dispatch(message) {
    if (!message || typeof message !== "object" || !message.data || typeof message.data !== "object") {
      console.warn("myko: ignored a message that is not an envelope", message);
      return;
    }
    const { event, data } = message;
    const tx = Array.isArray(data) ? undefined : data.tx;
    switch (event) {
      case "ws:m:query-response":
      case "ws:m:report-response": {
        const sub = this._subs.get(tx);
        const kind = event === "ws:m:query-response" ? "query" : "report";
        if (sub && sub.kind === kind) sub._apply(data);
        break;
      }
      case "ws:m:query-error":
      case "ws:m:report-error":
        this._subscriptionError(data);
        break;
      case "ws:m:command-response":
      case "ws:m:command-error": {
        const pending = this._commands.get(tx);
        if (!pending) return; // a re-sent command answered twice
        this._commands.delete(tx);
        if (event === "ws:m:command-response") pending.resolve(data.response);
        else {
          const commandId = data.commandId ?? pending.commandId;
          pending.reject(new CommandFailed(data.message || "command failed", { commandId, tx }));
        }
        break;
      }
      case "ws:m:event-error":
        this.eventErrors.push(data);
        this._emit("event-error", data);
        break;
      case "ws:m:ping": {
        const ping = this._pings.get(data.id);
        if (ping) {
          this._pings.delete(data.id);
          ping.resolve(performance.now() - ping.started);
        }
        break;
      }
      default:
        break; // ws:m:protocol-switch and anything newer
    }
  }

  _subscriptionError(data) {
    const tx = data.tx;
    const sub = this._subs.get(tx);
    if (!sub) return;
    this._subs.delete(tx);
    const message = data.message || `${sub.kind} failed`;
    if (sub.kind === "query") sub._fail(new QueryFailed(message, { queryId: data.queryId ?? sub.queryId, tx }));
    else sub._fail(new ReportFailed(message, { reportId: data.reportId ?? sub.reportId, tx }));
    // After an error (a bad window leaves the subscription alive) the server forgets it too.
    this._enqueue({ event: `ws:m:${sub.kind}-cancel`, data: { tx } });
  }

  // ---- the API ------------------------------------------------------------------------

  /**
   * Subscribe to a live query: `query(descriptor, options?)` with a descriptor
   * `{queryId, queryItemType, params}` (as generated by manage.py myko_typegen), or
   * `query(queryId, queryItemType, params?, options?)`. `options.window`: `{offset, limit}`.
   */
  query(descriptor, ...rest) {
    let queryId, queryItemType, params, options;
    if (typeof descriptor === "string") [queryId, queryItemType, params, options] = [descriptor, ...rest];
    else {
      ({ queryId, queryItemType, params } = descriptor ?? {});
      options = rest[0];
    }
    const sub = new LiveQuery(this, queryId, queryItemType, params, options?.window);
    this._subscribe(sub);
    return sub;
  }

  /** Subscribe to a live report: `report({reportId, params})` or `report(reportId, params?)`. */
  report(descriptor, params = undefined) {
    const [reportId, p] = typeof descriptor === "string" ? [descriptor, params] : [descriptor?.reportId, descriptor?.params];
    const sub = new LiveReport(this, reportId, p);
    this._subscribe(sub);
    return sub;
  }

  _subscribe(sub) {
    this._enqueue(sub._message());
    this._subs.set(sub.tx, sub);
  }

  /**
   * Run a command; resolves with its response, rejects with CommandFailed (the server's
   * message). `command({commandId, params}, {tx}?)` or `command(commandId, params?, {tx}?)`.
   * Survives reconnects: re-sent with the same tx until answered.
   */
  command(descriptor, ...rest) {
    let commandId, params, options;
    if (typeof descriptor === "string") [commandId, params, options] = [descriptor, ...rest];
    else {
      ({ commandId, params } = descriptor ?? {});
      options = rest[0];
    }
    try {
      if (typeof commandId !== "string" || !commandId) throw new TypeError("commandId must be a non-empty string");
      const tx = options?.tx ?? newTx();
      if (this._commands.has(tx)) throw new TypeError(`a command with tx ${JSON.stringify(tx)} is already waiting`);
      const request = { ...checkParams(params), tx, createdAt: now() };
      const message = { event: "ws:m:command", data: { command: request, commandId } };
      if (this._closed) throw this._closed;
      return new Promise((resolve, reject) => {
        this._commands.set(tx, { commandId, message, resolve, reject });
        this._enqueue(message, { commandTx: tx });
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Publish one client event (SET replaces the whole item, DEL removes `item.id`); resolves
   * with its tx once handed to the socket. Not acknowledged by the protocol: a rejection
   * arrives as an "event-error" event carrying that tx. Use a command when a write must
   * be confirmed.
   */
  sendEvent(itemType, item, changeType = "SET", { tx = newTx() } = {}) {
    try {
      if (typeof itemType !== "string" || !itemType) throw new TypeError("itemType must be a non-empty string");
      if (!item || typeof item !== "object" || typeof item.id !== "string") {
        throw new TypeError("an event's item must be an object with a string id");
      }
      if (changeType !== "SET" && changeType !== "DEL") throw new TypeError('changeType must be "SET" or "DEL"');
      const data = { item: { ...item }, changeType, itemType, createdAt: now(), tx };
      return new Promise((resolve, reject) => {
        this._enqueue({ event: "ws:m:event", data }, { keep: true, resolve: () => resolve(tx), reject });
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** SET an item (creates it when its id is new). */
  set(itemType, item, options = undefined) {
    return this.sendEvent(itemType, item, "SET", options);
  }

  /** DEL the item with this id (an id that does not exist changes nothing). */
  delete(itemType, id, options = undefined) {
    return this.sendEvent(itemType, { id: String(id) }, "DEL", options);
  }

  /** Publish events as one ws:m:event-batch (the valid ones commit together). */
  sendEvents(events) {
    try {
      if (!Array.isArray(events)) throw new TypeError("sendEvents takes a list of events");
      return new Promise((resolve, reject) => {
        this._enqueue({ event: "ws:m:event-batch", data: events.map((e) => ({ ...e })) }, { keep: true, resolve, reject });
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Round trip to the server in milliseconds, measured with ws:m:ping. */
  async ping() {
    while (this.state !== State.OPEN) {
      if (this._closed) throw this._closed;
      await new Promise((resolve) => {
        const off = this.on("state", () => {
          off();
          resolve();
        });
      });
    }
    const id = newTx();
    return new Promise((resolve, reject) => {
      this._pings.set(id, { started: performance.now(), resolve, reject });
      this._enqueue({ event: "ws:m:ping", data: { id, timestamp: Date.now() } });
    });
  }
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  // Node's ws package throws an 'error' nobody listens to (closing a socket that is still
  // connecting emits one): keep a listener that ignores it.
  ws.onerror = () => {};
}

/** Connect to a myko server (default: this page's server at /myko). Resolves with the
 * client once the first connection is open; rejects when it fails. Later drops are
 * retried with back-off (options.backoff, in ms). */
export function connect(url = undefined, options = {}) {
  return new Client(url, options).open();
}
