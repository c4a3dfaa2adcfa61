// Type declarations of myko.js (written by hand; keep them in step with myko.js).
// manage.py myko_typegen generates descriptors of these shapes for a project's items,
// queries, reports and commands.

/** A live query to run: what `client.query()` takes. `Item` is the type of its items. */
export interface QueryDescriptor<Item, Params = Record<string, unknown>> {
  readonly queryId: string;
  readonly queryItemType: string;
  readonly params: Params;
  /** Never set: carries the item type for TypeScript. */
  readonly __item?: Item;
}

/** A live report to subscribe to: what `client.report()` takes. */
export interface ReportDescriptor<Result, Params = Record<string, unknown>> {
  readonly reportId: string;
  readonly params: Params;
  /** Never set: carries the result type for TypeScript. */
  readonly __result?: Result;
}

/** A command to run: what `client.command()` takes. */
export interface CommandDescriptor<Result, Params = Record<string, unknown>> {
  readonly commandId: string;
  readonly params: Params;
  /** Never set: carries the result type for TypeScript. */
  readonly __result?: Result;
}

/** Every item has a string id. */
export interface MykoItem {
  readonly id: string;
  [field: string]: unknown;
}

export interface QueryWindow {
  offset?: number;
  limit: number;
}

export interface QueryOptions {
  /** Ask for one page of the result (ids in code-point order). */
  window?: QueryWindow | null;
}

export interface CommandOptions {
  /** The command's idempotency key (default: a new UUID). */
  tx?: string;
}

export interface EventOptions {
  tx?: string;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export declare const State: {
  readonly CONNECTING: "connecting";
  readonly OPEN: "open";
  readonly RECONNECTING: "reconnecting";
  readonly CLOSED: "closed";
};

export interface ClientOptions {
  /** Retry after a drop (default true). */
  reconnect?: boolean;
  /** [initial, maximum] milliseconds between reconnect attempts (default [100, 5000]). */
  backoff?: [number, number];
  /** "json" (default: text frames) or "cbor" (binary frames; integers beyond 2**53 as BigInt). */
  protocol?: "json" | "cbor";
  /** An access token, sent as ?access_token= on every (re)connect. */
  token?: string | null;
  /** The WebSocket class (default: globalThis.WebSocket; in Node 20, the ws package's). */
  WebSocket?: unknown;
  onEventError?: (data: EventErrorData) => void;
  onState?: (state: ConnectionState, client: Client) => void;
}

/** A ws:m:event-error payload: a client event the server refused. */
export interface EventErrorData {
  tx: string | null;
  itemType: string;
  message: string;
}

/** One event of a ws:m:event-batch. */
export interface MykoEvent {
  item: MykoItem | { id: string; [field: string]: unknown };
  changeType: "SET" | "DEL";
  itemType: string;
  tx?: string;
  createdAt?: string;
}

export declare class MykoError extends Error {}
export declare class CommandFailed extends MykoError {
  readonly commandId: string | null;
  readonly tx: string | null;
}
export declare class QueryFailed extends MykoError {
  readonly queryId: string | null;
  readonly tx: string | null;
}
export declare class ReportFailed extends MykoError {
  readonly reportId: string | null;
  readonly tx: string | null;
}
export declare class ClientClosed extends MykoError {}
export declare class ConnectionLost extends MykoError {}

declare class Subscription<Snapshot> {
  readonly tx: string;
  readonly kind: "query" | "report";
  readonly error: MykoError | null;
  readonly received: boolean;
  readonly ended: boolean;
  /** Called after each response with the new state; returns a function that removes it. */
  on(name: "change", listener: (value: Snapshot, subscription: this) => void): () => void;
  on(name: "error", listener: (error: MykoError) => void): () => void;
  off(name: string, listener: (...args: never[]) => void): void;
  /** Stop the subscription here and on the server; iterators finish. */
  cancel(): void;
  /** The current value once there, then again after each change. */
  [Symbol.asyncIterator](): AsyncIterator<Snapshot>;
}

/** A live query: `items` is the current result by id. */
export declare class LiveQuery<Item = MykoItem> extends Subscription<Map<string, Item>> {
  readonly queryId: string;
  readonly queryItemType: string | null;
  readonly params: Record<string, unknown>;
  readonly window: QueryWindow | null;
  readonly items: Map<string, Item>;
  /** How many items match, whatever the window; null before the first response. */
  readonly totalCount: number | null;
  readonly sequence: number | null;
  /** The page's ids in order, for a windowed query. */
  readonly order: string[] | null;
  /** The items in window order (windowed) or sorted by id. */
  list(): Item[];
  /** The first complete result; rejects with QueryFailed. */
  ready(): Promise<Map<string, Item>>;
  setWindow(window: QueryWindow | null): void;
  clearWindow(): void;
}

/** A live report: `value` is its latest value. */
export declare class LiveReport<Result = unknown> extends Subscription<Result> {
  readonly reportId: string;
  readonly params: Record<string, unknown>;
  readonly value: Result | undefined;
  /** The first value; rejects with ReportFailed. */
  ready(): Promise<Result>;
}

export declare class Client {
  constructor(url?: string | string[] | null, options?: ClientOptions);
  readonly urls: string[];
  readonly url: string;
  readonly state: ConnectionState;
  readonly connected: boolean;
  readonly reconnects: number;
  readonly protocol: "json" | "cbor";
  readonly eventErrors: EventErrorData[];
  token: string | null;
  /** Connect and keep retrying, the first attempt included (what a page wants). */
  start(): this;
  /** Resolves once the first connection is open; rejects when it fails. */
  open(): Promise<this>;
  close(): void;
  on(name: "state", listener: (state: ConnectionState, client: Client) => void): () => void;
  on(name: "open", listener: (client: Client) => void): () => void;
  on(name: "close", listener: (info: { code: number; reason: string }) => void): () => void;
  on(name: "event-error", listener: (data: EventErrorData) => void): () => void;
  off(name: string, listener: (...args: never[]) => void): void;

  query<Item, Params>(descriptor: QueryDescriptor<Item, Params>, options?: QueryOptions): LiveQuery<Item>;
  query<Item = MykoItem>(
    queryId: string,
    queryItemType?: string | null,
    params?: Record<string, unknown>,
    options?: QueryOptions,
  ): LiveQuery<Item>;

  report<Result, Params>(descriptor: ReportDescriptor<Result, Params>): LiveReport<Result>;
  report<Result = unknown>(reportId: string, params?: Record<string, unknown>): LiveReport<Result>;

  command<Result, Params>(descriptor: CommandDescriptor<Result, Params>, options?: CommandOptions): Promise<Result>;
  command<Result = unknown>(
    commandId: string,
    params?: Record<string, unknown>,
    options?: CommandOptions,
  ): Promise<Result>;

  sendEvent(
    itemType: string,
    item: { id: string; [field: string]: unknown },
    changeType?: "SET" | "DEL",
    options?: EventOptions,
  ): Promise<string>;
  set(itemType: string, item: { id: string; [field: string]: unknown }, options?: EventOptions): Promise<string>;
  delete(itemType: string, id: string, options?: EventOptions): Promise<string>;
  sendEvents(events: MykoEvent[]): Promise<void>;
  /** Round trip in milliseconds. */
  ping(): Promise<number>;
}

/** The CBOR codec of protocol "cbor": maps with text keys, arrays, text, numbers, BigInt
 * (integers beyond 2**53), booleans and null; no tags, no byte strings. */
export declare const cbor: {
  encode(value: unknown): Uint8Array;
  decode(data: ArrayBuffer | Uint8Array): unknown;
};

/** ws:// or wss:// (as the page is http: or https:), the page's host, `path`. */
export declare function defaultUrl(path?: string): string;

/** A client whose first connection is open (default URL: this page's server, /myko). */
export declare function connect(url?: string | string[] | null, options?: ClientOptions): Promise<Client>;
