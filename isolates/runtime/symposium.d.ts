// The `symposium` API a content block calls, as TypeScript declarations: what the
// runner's editor completes and explains, and what authors give their own editors
// (served at /runner/symposium.d.ts). Every method is one operation of
// capabilities/registry.py (or a convenience of isolates/runtime/worker.js calling one),
// with the parameters of worker.js's SIGNATURES; tests/test_symposium_types.py fails when
// an operation, a convenience or a parameter is missing here.
//
// Every call returns a promise of an envelope, `{success: true, data, ...}`, or rejects
// with a SymposiumError (code, message, capability) when it is refused or fails.

/** What every successful call resolves to: `data` and the operation's own fields. */
interface SymposiumEnvelope<T> {
  success: true;
  data: T;
}

/** Why a call failed. `code` is one of the platform's codes (PERMISSION_DENIED, NOT_FOUND,
 * INVALID_ARGUMENT, QUOTA_EXCEEDED, RATE_LIMITED, TIMEOUT, UPSTREAM_ERROR, INTERNAL, ...). */
declare class SymposiumError extends Error {
  name: "SymposiumError";
  code: string;
  capability: string | null;
  /** Seconds to wait before trying again, when the refusal was a rate limit. */
  retryAfter: number | null;
  operation: string | null;
}

/** Bytes a call sends or receives: a Uint8Array (or any ArrayBuffer view). */
type SymposiumBytes = Uint8Array | ArrayBuffer | ArrayBufferView;

interface FileRead<T> extends SymposiumEnvelope<T> {
  size: number;
  encoding: "utf-8" | "binary";
  path: string;
  /** ISO 8601 time of the last change. */
  modified: string;
}

interface FileEntry {
  name: string;
  path: string;
  type: "file" | "directory";
  size: number;
  modified: string;
}

interface FileInfo {
  path: string;
  type: "file" | "directory";
  size: number;
  modified: string;
}

interface FetchOptions {
  method?: "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS";
  headers?: Record<string, string>;
  /** A string, bytes, or a JSON value (sent as application/json). */
  body?: string | SymposiumBytes | unknown;
  /** Seconds, at most the tenant's limit. */
  timeout?: number;
  /** "follow" (the default) or "manual". */
  redirect?: "follow" | "manual";
}

interface FetchEnvelope extends SymposiumEnvelope<string | unknown | Uint8Array> {
  status: number;
  statusText: string;
  headers: Record<string, string>;
  ok: boolean;
  url: string;
  redirected: boolean;
}

interface WebhookOptions {
  headers?: Record<string, string>;
  /** Delivery attempts after the first one. */
  retries?: number;
  timeout?: number;
}

interface WebhookDelivery {
  status: number | null;
  attempts: number;
  delivered: boolean;
  id: string;
  /** The start of the receiver's answer. */
  response: string;
}

interface Canvas {
  canvasId: string;
  width: number;
  height: number;
}

/** One drawing operation, as CanvasRenderingContext2D names it: `{type: "fillRect", x, y,
 * width, height}`, `{type: "fillStyle", value: "#08f"}`, `{type: "fillText", text, x, y}`,
 * `{type: "drawImage", path, dx, dy}` ... (docs/canvas.md lists them all). */
interface CanvasOp {
  type: string;
  [field: string]: unknown;
}

interface CanvasDrawn {
  canvasId: string;
  opCount: number;
  /** measureText's results, when the operations asked for them. */
  metrics?: unknown[];
}

interface CanvasImage extends SymposiumEnvelope<Uint8Array> {
  canvasId: string;
  format: "png" | "jpeg" | "webp";
  mimeType: string;
  width: number;
  height: number;
  size: number;
}

interface QueryResult {
  rows: Record<string, unknown>[];
  rowCount: number;
  columns: string[];
  lastInsertId?: number;
}

interface TransactionStep {
  sql: string;
  params?: unknown[];
}

interface ProcessOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Text given to the command's standard input. */
  input?: string;
  /** Seconds, at most the tenant's limit. */
  timeout?: number;
}

interface ProcessResult {
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  timedOut: boolean;
  timeoutMs: number;
  truncated: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

interface KvListOptions {
  prefix?: string;
  limit?: number;
  cursor?: string | null;
}

interface EmailMessage {
  to: string | string[];
  cc?: string | string[];
  bcc?: string | string[];
  replyTo?: string | string[];
  subject: string;
  text?: string;
  html?: string;
  attachments?: { filename: string; content: string | SymposiumBytes; contentType?: string }[];
}

interface ImageInfo {
  format: string;
  width: number;
  height: number;
  mode: string;
  frames: number;
  orientation: number | null;
  animated: boolean;
  size: number;
  path: string;
}

/** One step of a transform: resize {width, height, fit}, crop {x, y, width, height},
 * rotate {degrees}, flip {direction}, autoOrient, grayscale, blur {radius}, sharpen,
 * thumbnail {size}. */
interface ImageStep {
  type: "resize" | "crop" | "rotate" | "flip" | "autoOrient" | "grayscale" | "blur" | "sharpen" | "thumbnail";
  [field: string]: unknown;
}

interface ImageTransformOptions {
  output: string;
  format?: "png" | "jpeg" | "webp" | "gif";
  quality?: number;
  keepMetadata?: boolean;
}

declare namespace symposium {
  /** Read a file of the tenant's storage: text (UTF-8, the default) or, with
   * `{encoding: "binary"}`, its bytes. */
  function readFile(path: string, opts?: "utf-8" | "binary" | { encoding?: "utf-8" | "binary" }): Promise<FileRead<string | Uint8Array>>;
  /** Write text or bytes to a file of the tenant's storage (folders are made as needed). */
  function writeFile(path: string, data: string | SymposiumBytes): Promise<SymposiumEnvelope<{ path: string; size: number }> & { path: string; size: number }>;
  /** The files and folders in a folder of the tenant's storage ("" is its root). */
  function listDirectory(path?: string): Promise<SymposiumEnvelope<FileEntry[]> & { path: string; count: number; total: number; truncated: boolean }>;
  /** Size, kind and time of change of a file or folder. */
  function getFileInfo(path: string): Promise<SymposiumEnvelope<FileInfo> & { size: number; modified: string; type: "file" | "directory" }>;
  /** Whether a file or folder exists: `data` is true or false. */
  function fileExists(path: string): Promise<SymposiumEnvelope<boolean>>;
  /** Delete a file (or an empty folder). */
  function deleteFile(path: string): Promise<SymposiumEnvelope<{ path: string; type: "file" | "directory" }> & { path: string }>;

  const network: {
    /** An HTTP request to an allowed host; `data` is the body (parsed JSON, text, or bytes). */
    fetch(url: string, opts?: FetchOptions): Promise<FetchEnvelope>;
    /** POST a JSON payload, signed with the tenant's webhook secret, retrying on failure. */
    sendWebhook(url: string, payload: unknown, opts?: WebhookOptions): Promise<SymposiumEnvelope<WebhookDelivery> & { status: number | null; ok: boolean }>;
  };

  const canvas: {
    /** A new transparent canvas of width x height pixels for this run. */
    createCanvas(width: number, height: number): Promise<SymposiumEnvelope<Canvas> & Canvas>;
    /** Append drawing operations to a canvas. */
    draw(canvasId: string, ops: CanvasOp[]): Promise<SymposiumEnvelope<CanvasDrawn> & { canvasId: string; opCount: number }>;
    /** Render the canvas as an image (png, jpeg or webp); a number after the format is the quality. */
    exportImage(canvasId: string, format?: "png" | "jpeg" | "webp", opts?: number | { quality?: number }): Promise<CanvasImage>;
    /** Draw an image file of the tenant's storage at (dx, dy), scaled to dw x dh if given. */
    drawImage(canvasId: string, path: string, dx: number, dy: number, dw?: number, dh?: number): Promise<SymposiumEnvelope<CanvasDrawn> & { canvasId: string; opCount: number }>;
  };

  const database: {
    /** One SQL statement on the tenant's own database, with ? (or $1) parameters. */
    query(sql: string, params?: unknown[]): Promise<SymposiumEnvelope<QueryResult> & { rowCount: number; columns: string[] }>;
    /** Several statements, all or none. */
    transaction(steps: TransactionStep[]): Promise<SymposiumEnvelope<{ results: QueryResult[]; rowCount: number }> & { rowCount: number }>;
  };

  const process: {
    /** Run an allowed command (no shell) in its own sandbox. */
    execute(command: string, args?: string[], opts?: ProcessOptions): Promise<SymposiumEnvelope<ProcessResult> & { exitCode: number | null; stdout: string; stderr: string; durationMs: number; timedOut: boolean; truncated: boolean }>;
  };

  const kv: {
    /** The value stored under a key; `found` says whether there was one. */
    get(key: string): Promise<SymposiumEnvelope<unknown> & { found: boolean; expires?: string | null }>;
    /** Store a JSON value under a key; opts.ttl (or a bare number) is its lifetime in seconds. */
    set(key: string, value: unknown, opts?: number | { ttl?: number }): Promise<SymposiumEnvelope<unknown>>;
    /** Delete a key: `data.deleted` says whether it existed. */
    delete(key: string): Promise<SymposiumEnvelope<{ deleted: boolean }>>;
    /** The keys (with an optional prefix), a page at a time. */
    list(opts?: KvListOptions): Promise<SymposiumEnvelope<{ keys: string[]; cursor: string | null }>>;
  };

  const email: {
    /** Send a message through the platform's relay, to the tenant's allowed recipients. */
    send(message: EmailMessage): Promise<SymposiumEnvelope<{ messageId: string; accepted: string[] }>>;
  };

  const image: {
    /** Format, size and orientation of an image file. */
    info(path: string): Promise<SymposiumEnvelope<ImageInfo>>;
    /** Apply steps to an image file and write the result (opts.output, or a bare path). */
    transform(path: string, steps?: ImageStep[], opts?: string | ImageTransformOptions): Promise<SymposiumEnvelope<ImageInfo> & { path: string; size: number }>;
  };

  const realtime: {
    /** Publish a JSON message on one of the tenant's channels. */
    publish(channel: string, message: unknown): Promise<SymposiumEnvelope<{ delivered?: number }>>;
  };

  /** Helpers that run in the block itself (no call, no audit row). */
  const utils: {
    /** A path under temp/ for a scratch file, e.g. "temp/tmp_1700000000000_ab12cd.png". */
    generateTempPath(extension?: string): string;
    /** Milliseconds since the epoch (Date.now()). */
    getTimestamp(): number;
    /** A random identifier of 12 lowercase letters and digits. */
    generateId(): string;
  };
}

/** The tenant's secrets, by name (read-only). */
declare const process: { readonly env: Readonly<Record<string, string>> };
