// The block's side of the isolate: the `symposium` proxy API (built from the operations the
// broker names in its start frame), console capture, `process.env`
// and the code that loads and runs the block.
//
// This module runs first in the Deno Web Worker that will hold the block (created by
// main.js with zero Deno permissions). Everything it sets up, the block can see and
// tamper with: nothing here is a security boundary. The trusted side is main.js, which
// re-checks every message this worker sends (frame types, in-flight calls, the console
// cap) and does all encoding for the broker. What this file enforces for a well-behaved
// block, main.js enforces again for a hostile one.

const post = globalThis.postMessage.bind(globalThis);
const addListener = globalThis.addEventListener.bind(globalThis);
const inspect = Deno.inspect;
const NotCapable = Deno.errors.NotCapable;
const RUNTIME_URL = import.meta.url;

// Set by the start message; the defaults only matter if a block calls before it.
const config = { callTimeoutMs: 30000, maxInFlight: 64, consoleCap: 1024 * 1024 };
let blockUrl = null;
let blockName = "block.js";

// -- errors and stack traces -------------------------------------------------------------

class SymposiumError extends Error {
  constructor(code, message, capability = null, retryAfter = null, operation = null) {
    super(message);
    this.name = "SymposiumError";
    this.code = code;
    this.capability = capability;
    this.retryAfter = retryAfter;
    this.operation = operation;
  }
}

// Stack traces name the block by its file name and never show the runtime (whose URL is
// a blob, but whose frames are noise to a block author). Same shape as V8's own traces.
function displayName(file) {
  if (!file) return null;
  if (file === blockUrl) return blockName;
  if (file.startsWith("file:")) return "<runtime>";
  if (file.startsWith("data:") && file.length > 60) return file.slice(0, 57) + "...";
  return file;
}

function formatCallSite(site) {
  let location;
  if (site.isNative()) {
    location = "native";
  } else {
    location = displayName(site.getFileName() ?? site.getScriptNameOrSourceURL?.()) ?? "<anonymous>";
    const line = site.getLineNumber();
    if (line != null) {
      location += `:${line}`;
      const column = site.getColumnNumber();
      if (column != null) location += `:${column}`;
    }
  }
  let text = site.isAsync() ? "async " : "";
  if (site.isPromiseAll()) return `${text}Promise.all (index ${site.getPromiseIndex()})`;
  const fn = site.getFunctionName();
  if (site.isConstructor()) {
    text += `new ${fn || "<anonymous>"}`;
  } else if (!site.isToplevel()) {
    const type = site.getTypeName();
    const method = site.getMethodName();
    if (fn) {
      if (type && !fn.startsWith(`${type}.`)) text += `${type}.`;
      text += fn;
      if (method && !fn.endsWith(method)) text += ` [as ${method}]`;
    } else {
      text += `${type ?? "<anonymous>"}.${method ?? "<anonymous>"}`;
    }
  } else if (fn) {
    text += fn;
  } else {
    return text + location;
  }
  return `${text} (${location})`;
}

function errorHeader(error) {
  try {
    return Error.prototype.toString.call(error);
  } catch {
    return "Error";
  }
}

// Frames of the platform are not the author's: the runtime (worker.js, main.js), Deno's
// own JavaScript (ext:, node:), and modules that are not the block (other blob: URLs).
// Frames without a file at the top of what is left (`new Promise` inside fetch) were
// called by the platform too. What remains is the block's own code, as a browser would show it.
function frameFile(site) {
  return site.getFileName() ?? site.getScriptNameOrSourceURL?.() ?? "";
}

function isPlatformFrame(site) {
  const file = frameFile(site);
  if (!file || file === blockUrl) return false;
  return file === RUNTIME_URL || /^(ext|node|file|blob|data):/.test(file);
}

function blockFrames(sites) {
  const kept = sites.filter((site) => !isPlatformFrame(site));
  let first = 0;
  while (first + 1 < kept.length && !frameFile(kept[first])) first++;
  return kept.slice(first);
}

Error.prepareStackTrace = (error, sites) => {
  const lines = [errorHeader(error)];
  for (const site of blockFrames(sites)) lines.push(`    at ${formatCallSite(site)}`);
  return lines.join("\n");
};

// Messages Deno builds itself (a syntax error, a failed import) quote the module's URL.
function scrub(text) {
  text = String(text);
  if (blockUrl) text = text.split(blockUrl).join(blockName);
  return text.split(RUNTIME_URL).join("<runtime>");
}

// Deno reports a block that does not parse, or whose static import is refused, as a
// TypeError whose message carries Deno's code frame and the location ("\n    at
// block.js:2:11"). The location goes into the stack, where every other error has its
// frames, and the message keeps the sentence alone: the platform draws the code frame.
const MESSAGE_LOCATION = /\n\s+at (\S+:\d+:\d+)\s*$/;

function splitLocation(message) {
  const match = MESSAGE_LOCATION.exec(message);
  if (!match) return { message, location: null };
  let text = message.slice(0, match.index);
  // Deno's code frame: "\n  |\n2 | const b = ;\n  |           ~" after the sentence.
  const frame = text.search(/\n\s*\|/);
  if (frame >= 0) text = text.slice(0, frame);
  return { message: text.trimEnd(), location: match[1] };
}

function describeError(value) {
  if (value instanceof Error || (value && typeof value === "object" && "message" in value && "name" in value)) {
    let name = String(value.name ?? "Error");
    let message = scrub(value.message ?? "");
    let code = value.code !== undefined && value.code !== null ? String(value.code) : undefined;
    let stack = typeof value.stack === "string" ? scrub(value.stack) : undefined;
    if (name === "TypeError" && message.startsWith("SyntaxError: ")) {
      name = "SyntaxError";
      code = "SYNTAX_ERROR";
      message = message.slice("SyntaxError: ".length);
    }
    const split = splitLocation(message);
    if (split.location !== null) {
      message = split.message;
      stack = `${name}: ${message}\n    at ${split.location}`;
    }
    const described = { name, message };
    if (stack !== undefined) described.stack = stack;
    if (code !== undefined) described.code = code;
    return described;
  }
  return { name: "Error", message: `Uncaught ${scrub(typeof value === "string" ? value : inspect(value))}` };
}

// -- what the sandbox refuses, in the platform's words -----------------------------------

// Deno words a refusal for whoever starts it ("run again with the --allow-net flag"); no
// block author can. These say what a block uses instead. Keyed by Deno's permission kind.
const REFUSAL_ADVICE = {
  net: (what) => `A block cannot open network connections itself (${what}). Use symposium.network.fetch(url, options): the platform makes the request, within the tenant's network policy.`,
  read: (what) => `A block cannot read the server's files (${what}). The tenant's files are read with symposium.readFile(path) and listed with symposium.listDirectory(path).`,
  write: (what) => `A block cannot write the server's files (${what}). The tenant's files are written with symposium.writeFile(path, data).`,
  env: (what) => `A block cannot read the server's environment${what ? ` (${what})` : ""}. The tenant's secrets are in process.env.`,
  run: (what) => `A block cannot start programs itself (${what}). symposium.process.execute(command, args) runs the commands the tenant's profile allows.`,
  import: (what) => importAdvice(what),
  sys: (what) => `A block cannot read the server's system information${what ? ` (${what})` : ""}.`,
  ffi: (what) => `A block cannot load native libraries${what ? ` (${what})` : ""}.`,
};

function importAdvice(what) {
  return `A block cannot import modules from the network (${what}): isolates have no network. Import a vetted package instead (npm:NAME@VERSION, once an administrator has allowed it), or fetch data with symposium.network.fetch(url).`;
}

// The message a block should see instead of Deno's, or null when Deno's is not a refusal.
function platformMessage(message) {
  if (typeof message !== "string") return null;
  const newline = message.indexOf("\n");
  const head = newline < 0 ? message : message.slice(0, newline);
  const tail = newline < 0 ? "" : message.slice(newline);
  let match = /^Requires (\w+) access(?: to (.*?))?, run again with the --allow-[\w-]+ flag\.?$/.exec(head);
  if (match) {
    const advice = REFUSAL_ADVICE[match[1]];
    const what = match[2] ?? "";
    return (advice ? advice(what) : `A block does not have ${match[1]} access${what ? ` (${what})` : ""}.`) + tail;
  }
  match = /^A remote specifier was requested: (".*?"), but --no-remote is specified\.?$/.exec(head);
  if (match) return importAdvice(match[1]) + tail;
  if (/^npm specifiers were requested; but --no-npm is specified/.test(head)) {
    return "npm packages are imported only once an administrator has allowed them (Admin › Isolates › npm packages, /admin/isolates/npmpackage/), and only by a literal specifier the platform links before the run: write import x from \"npm:NAME@VERSION\" (or import(\"npm:NAME@VERSION\")), not a computed name." + tail;
  }
  // Any other refusal naming a Deno flag: the sentence without the flag.
  if (/--(allow|no)-[\w-]+/.test(head)) {
    return head.replace(/,? ?(run )?again with the --[\w-]+ flag/g, "").replace(/,? but --[\w-]+ is specified/g, "")
      .replace(/--(allow|no)-[\w-]+/g, "this permission") + " (a block does not have this permission)." + tail;
  }
  return null;
}

// Deno builds its refusals inside its own code, where no wrapper reaches: NotCapable for
// an operation (fetch, WebSocket, Deno.readFile, Deno.connect, Deno.env, node:fs) and a
// TypeError coded ERR_MODULE_NOT_FOUND for an import. Both constructors assign a
// property after setting the message (`this.name = "NotCapable"`, `error.code = ...`);
// an accessor on the prototype sees that assignment, keeps it as the plain property it
// would have been, and rewrites the message before the block ever holds the error.
function installPlatformMessages() {
  Object.defineProperty(NotCapable.prototype, "name", {
    configurable: true,
    get() { return "NotCapable"; },
    set(value) {
      Object.defineProperty(this, "name", { value, writable: true, configurable: true, enumerable: false });
      const rewritten = platformMessage(this.message);
      if (rewritten !== null) this.message = rewritten;
    },
  });
  Object.defineProperty(TypeError.prototype, "code", {
    configurable: true,
    get() { return undefined; },
    set(value) {
      let code = value;
      if (value === "ERR_MODULE_NOT_FOUND") {
        const rewritten = platformMessage(this.message);
        if (rewritten !== null) {
          this.message = rewritten;
          code = "PERMISSION_DENIED";
        }
      }
      Object.defineProperty(this, "code", { value: code, writable: true, configurable: true, enumerable: true });
    },
  });
}

installPlatformMessages();

// -- console -----------------------------------------------------------------------------

// Output is formatted like Deno's console (format specifiers, objects inspected) and sent
// to the broker as log frames. The cap is enforced again by main.js, which also writes
// the one line saying the output was truncated; here it just stops the work early.
let consoleBytes = 0;
let consoleFull = false;
const encoder = new TextEncoder();
let groupIndent = "";
const counters = new Map();
const timers = new Map();

function inspectArg(value) {
  return typeof value === "string" ? value : inspect(value, { colors: false, depth: 4 });
}

function formatArgs(args) {
  if (args.length === 0) return "";
  let first = args[0];
  let rest = 1;
  let out = "";
  if (typeof first === "string" && first.includes("%")) {
    out = first.replace(/%([sdifoOc%])/g, (match, spec) => {
      if (spec === "%") return "%";
      if (rest >= args.length) return match;
      const arg = args[rest++];
      switch (spec) {
        case "s":
          return typeof arg === "string" ? arg : typeof arg === "object" && arg !== null ? inspect(arg, { depth: 1 }) : String(arg);
        case "d":
        case "i":
          return typeof arg === "bigint" ? `${arg}n` : typeof arg === "symbol" ? "NaN" : String(spec === "i" ? parseInt(arg) : Number(arg));
        case "f":
          return typeof arg === "symbol" ? "NaN" : String(parseFloat(arg));
        case "o":
        case "O":
          return inspect(arg, { depth: 4 });
        case "c":
          return "";
      }
      return match;
    });
  } else {
    out = inspectArg(first);
  }
  for (; rest < args.length; rest++) out += " " + inspectArg(args[rest]);
  return out;
}

function emit(level, text) {
  if (consoleFull) return;
  if (groupIndent) text = text.split("\n").map((line) => groupIndent + line).join("\n");
  // A string can hold at most 3 UTF-8 bytes per UTF-16 unit; only measure what may fit.
  // Each line also costs its framing (main.js's CONSOLE_LINE_COST), empty ones included.
  const room = config.consoleCap - consoleBytes - 32;
  if (text.length > room) text = text.slice(0, Math.max(room, 0) + 1);
  const bytes = encoder.encode(text).length;
  consoleBytes += bytes + 32;
  // Past the cap main.js sends what fits and the truncation notice; nothing more is sent.
  if (consoleBytes > config.consoleCap) consoleFull = true;
  post({ type: "log", level, text, t: Date.now() });
}

function logger(level) {
  // Past the cap, console calls cost nothing: not even formatting.
  return (...args) => {
    if (!consoleFull) emit(level, formatArgs(args));
  };
}

const blockConsole = {
  log: logger("log"),
  info: logger("info"),
  warn: logger("warn"),
  error: logger("error"),
  debug: logger("debug"),
  trace: (...args) => emit("log", `Trace${args.length ? ": " + formatArgs(args) : ""}\n${new Error().stack.split("\n").slice(2).join("\n")}`),
  dir: (value) => emit("log", inspect(value, { depth: 4 })),
  dirxml: (...args) => emit("log", formatArgs(args)),
  table: (data) => emit("log", inspect(data, { depth: 4 })),
  assert: (condition, ...args) => {
    if (!condition) emit("error", args.length ? `Assertion failed: ${formatArgs(args)}` : "Assertion failed");
  },
  count: (label = "default") => {
    const n = (counters.get(String(label)) ?? 0) + 1;
    counters.set(String(label), n);
    emit("info", `${label}: ${n}`);
  },
  countReset: (label = "default") => counters.delete(String(label)),
  time: (label = "default") => timers.set(String(label), performance.now()),
  timeLog: (label = "default", ...args) => {
    const start = timers.get(String(label));
    if (start === undefined) return emit("warn", `Timer '${label}' does not exist`);
    emit("info", `${label}: ${(performance.now() - start).toFixed(0)}ms${args.length ? " " + formatArgs(args) : ""}`);
  },
  timeEnd: (label = "default") => {
    const start = timers.get(String(label));
    if (start === undefined) return emit("warn", `Timer '${label}' does not exist`);
    timers.delete(String(label));
    emit("info", `${label}: ${(performance.now() - start).toFixed(0)}ms`);
  },
  group: (...args) => {
    if (args.length) emit("log", formatArgs(args));
    groupIndent += "  ";
  },
  groupCollapsed: (...args) => blockConsole.group(...args),
  groupEnd: () => {
    groupIndent = groupIndent.slice(2);
  },
  clear: () => {},
};

// -- the proxy API -----------------------------------------------------------------------

const pending = new Map(); // call id -> {resolve, reject, timer, op}
let nextCallId = 1;

function isBinary(value) {
  return value instanceof ArrayBuffer || ArrayBuffer.isView(value);
}

// Arguments travel as JSON (binary as {"$bytes": base64}); refuse what JSON would silently
// mangle or cannot encode, with a message naming where it is.
function checkSendable(value, path, seen) {
  switch (typeof value) {
    case "function":
      throw new SymposiumError("INVALID_ARGUMENT", `${path} is a function; only JSON values and Uint8Array can be sent`);
    case "symbol":
      throw new SymposiumError("INVALID_ARGUMENT", `${path} is a symbol; only JSON values and Uint8Array can be sent`);
    case "bigint":
      throw new SymposiumError("INVALID_ARGUMENT", `${path} is a BigInt; convert it to a number or string first`);
    case "object":
      if (value === null || isBinary(value) || typeof value.toJSON === "function") return;
      if (seen.has(value)) throw new SymposiumError("INVALID_ARGUMENT", `${path} refers back to itself (a cycle); it cannot be sent as JSON`);
      seen.add(value);
      for (const key of Object.keys(value)) {
        checkSendable(value[key], Array.isArray(value) ? `${path}[${key}]` : `${path}.${key}`, seen);
      }
      seen.delete(value);
  }
}

function callName(op) {
  return `symposium.${op}`;
}

// One message per operation: a block that fires 100,000 calls at once gets 100,000
// rejections, and they should not cost 100,000 copies of the same sentence.
const rateLimitMessages = new Map();

function rateLimitMessage(op) {
  let message = rateLimitMessages.get(op);
  if (message === undefined) {
    message = `${callName(op)} refused: ${config.maxInFlight} capability calls are already in flight; await some before making more`;
    rateLimitMessages.set(op, message);
  }
  return message;
}

const refusalErrors = new Map();

function refusalError(op, capability) {
  let error = refusalErrors.get(op);
  if (error === undefined) {
    error = new SymposiumError("RATE_LIMITED", rateLimitMessage(op), capability, null, op);
    refusalErrors.set(op, error);
  }
  return error;
}

// A reply arrives from the event loop, so an error built then would have no frame of the
// block's in its stack. The error is built when the call is made instead (V8 formats a
// stack lazily, so the code and message filled in later still head it). Reassigning
// `stack` instead would not do: Deno replaces an error whose stack has no frames, when it
// ends a module's top-level await, with a generic one.
function failCall(error, code, message, retryAfter = null) {
  error.code = code;
  error.message = message;
  error.retryAfter = retryAfter;
  return error;
}

function call(op, capability, args) {
  if (pending.size >= config.maxInFlight) {
    // Rejected a moment later, not at once, so the caller has attached its handlers by
    // then: Deno's bookkeeping of promises rejected before they have a handler costs
    // O(n²), and a block firing 100,000 calls would wait minutes on it. One error per
    // operation serves every refusal, so that 100,000 refusals cost 100,000 promises,
    // not 100,000 errors with their stacks too.
    const error = refusalError(op, capability);
    return new Promise((_, reject) => queueMicrotask(() => reject(error)));
  }
  try {
    checkSendable(args, "arguments", new Set());
  } catch (error) {
    if (error instanceof SymposiumError) {
      error.message = `${callName(op)}: ${error.message}`;
      error.capability = capability;
      error.operation = op;
      return Promise.reject(error);
    }
    return Promise.reject(new SymposiumError("INVALID_ARGUMENT", `${callName(op)}: the arguments cannot be read (${scrub(error?.message ?? error)})`, capability, null, op));
  }
  const id = nextCallId++;
  const failure = new SymposiumError("INTERNAL", "", capability, null, op);
  return new Promise((resolve, reject) => {
    try {
      post({ type: "call", id, op, args });
    } catch (error) {
      reject(new SymposiumError("INVALID_ARGUMENT", `${callName(op)}: the arguments cannot be sent (${scrub(error?.message ?? error)})`, capability, null, op));
      return;
    }
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(failCall(failure, "TIMEOUT", `${callName(op)} got no reply within ${config.callTimeoutMs} ms`));
    }, config.callTimeoutMs);
    pending.set(id, { resolve, reject, timer, op, failure });
  });
}

function settle(reply) {
  const entry = pending.get(reply.id);
  if (!entry) return; // timed out already: the late reply is dropped
  pending.delete(reply.id);
  clearTimeout(entry.timer);
  if (reply.ok) {
    const envelope = { success: true };
    // The broker sends the envelope's fields under `envelope`, so that a field named
    // like a frame key (getFileInfo's `type`) cannot collide with the frame's own.
    const fields = reply.envelope && typeof reply.envelope === "object" ? reply.envelope : reply;
    for (const [key, value] of Object.entries(fields)) {
      if (fields !== reply || (key !== "type" && key !== "id" && key !== "ok")) envelope[key] = value;
    }
    if (!("data" in envelope)) envelope.data = null;
    entry.resolve(envelope);
  } else {
    const error = reply.error ?? {};
    entry.reject(
      failCall(
        entry.failure,
        typeof error.code === "string" ? error.code : "INTERNAL",
        typeof error.message === "string" ? error.message : `${callName(entry.op)} failed`,
        error.retryAfter ?? null,
      ),
    );
  }
}

function randomString(length) {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  let out = "";
  for (const byte of bytes) out += alphabet[byte % alphabet.length];
  return out;
}

const options = (value) => (value && typeof value === "object" ? value : {});

// The API's methods return call()'s promise itself (an async wrapper would add a promise
// per call), and turn anything thrown while building the arguments into a rejection.
function method(op, capability, buildArgs) {
  return (...params) => {
    let args;
    try {
      args = buildArgs(...params);
    } catch (error) {
      return Promise.reject(new SymposiumError("INVALID_ARGUMENT", `${callName(op)}: the arguments cannot be read (${scrub(error?.message ?? error)})`, capability, null, op));
    }
    return call(op, capability, args);
  };
}

// How each method's parameters become its call's arguments: the API's signatures. Which
// operations exist, and their capabilities, come from the broker (the start message);
// an operation without a signature here takes its arguments as one object.
const SIGNATURES = {
  readFile: (path, opts) => ({ path, encoding: typeof opts === "string" ? opts : (options(opts).encoding ?? "utf-8") }),
  writeFile: (path, data) => ({ path, data }),
  listDirectory: (path = "") => ({ path }),
  getFileInfo: (path) => ({ path }),
  fileExists: (path) => ({ path }),
  deleteFile: (path) => ({ path }),
  "network.fetch": (url, opts) => ({ url, ...options(opts) }),
  "network.sendWebhook": (url, payload, opts) => ({ url, payload, ...options(opts) }),
  "canvas.createCanvas": (width, height) => ({ width, height }),
  "canvas.draw": (canvasId, ops) => ({ canvasId, ops }),
  // Like toDataURL(type, quality), a bare number is the quality.
  "canvas.exportImage": (canvasId, format = "png", opts) =>
    typeof opts === "number" ? { canvasId, format, quality: opts } : { canvasId, format, ...options(opts) },
  "database.query": (sql, params = []) => ({ sql, params }),
  "database.transaction": (steps) => ({ steps }),
  "process.execute": (command, args = [], opts) => ({ command, args, ...options(opts) }),
  "kv.get": (key) => ({ key }),
  // opts: {ttl} in seconds, or a bare number of seconds.
  "kv.set": (key, value, opts) => (typeof opts === "number" ? { key, value, ttl: opts } : { key, value, ...options(opts) }),
  "kv.delete": (key) => ({ key }),
  "kv.list": (opts) => ({ ...options(opts) }),
  "image.info": (path) => ({ path }),
  // opts: {output, format?, quality?, keepMetadata?}; a bare string is the output path.
  "image.transform": (path, steps = [], opts) =>
    (typeof opts === "string" ? { path, steps, output: opts } : { path, steps, ...options(opts) }),
  "realtime.publish": (channel, message) => ({ channel, message }),
};

// Methods that are another operation's call with its arguments shaped for one use; each
// exists when the operation it calls does.
const CONVENIENCES = {
  // One drawImage op from a tenant file: drawImage(id, path, x, y, width?, height?).
  "canvas.drawImage": ["canvas.draw", (canvasId, path, dx, dy, dw, dh) =>
    ({ canvasId, ops: [dw === undefined && dh === undefined ? { type: "drawImage", path, dx, dy } : { type: "drawImage", path, dx, dy, dw, dh }] })],
};

const utils = Object.freeze({
  generateTempPath: (extension = ".tmp") => {
    const ext = extension === "" || String(extension).startsWith(".") ? String(extension) : `.${extension}`;
    return `temp/tmp_${Date.now()}_${randomString(6)}${ext}`;
  },
  getTimestamp: () => Date.now(),
  generateId: () => randomString(12),
});

// The `symposium` object: one method per operation the broker named ("readFile" becomes
// symposium.readFile, "canvas.draw" symposium.canvas.draw), plus the local utils.
function buildApi(operations) {
  const api = {};
  const namespaces = new Map();
  const methods = Object.entries(operations).map(([op, capability]) =>
    [op, method(op, capability, Object.hasOwn(SIGNATURES, op) ? SIGNATURES[op] : (args) => options(args))]);
  for (const [name, [op, buildArgs]] of Object.entries(CONVENIENCES)) {
    if (Object.hasOwn(operations, op)) methods.push([name, method(op, operations[op], buildArgs)]);
  }
  for (const [op, fn] of methods) {
    const [first, second] = op.split(".");
    if (second === undefined) api[op] = fn;
    else {
      if (!namespaces.has(first)) namespaces.set(first, {});
      namespaces.get(first)[second] = fn;
    }
  }
  for (const [name, namespace] of namespaces) api[name] = Object.freeze(namespace);
  api.utils = utils;
  return Object.freeze(api);
}

// -- the isolate's standard streams -------------------------------------------------------

// The block shares the process's stderr with the runtime and V8 (whose last words on
// running out of memory the pool reads there), and the pool reads every byte of it: a
// block writing there directly would bypass the console cap and could forge the
// runtime's lines. So every way to a raw standard stream that Deno gives a worker is
// closed, in this worker only (the OS descriptors stay open for the runtime and V8):
// - Deno's internals (`Deno[Deno.internal]`: core.writeSync, core.print, core.ops), kept
//   out of the block's `Deno` below;
// - the worker's resources 0-2 (what Deno's and node:process's streams write through),
//   closed here;
// - Deno's own console, which prints without any resource: it becomes the block's;
// - node's side (node's descriptors 0-2, the native stream handles node:tty and
//   node:net take a descriptor with, node:console, process.stdout/stderr/_rawDebug) is
//   closed by a module the runtime's import map runs before any node module reaches the
//   block (SEAL_NODE in isolates/pool.py): loading node here, in every isolate, would cost
//   every run the memory of node's modules.
// What is not closed (a route a later Deno adds) still meets the pool's bound on stderr,
// and can never pass for the runtime's lines there (see isolates/pool.py).

// Deno's own console and internals, before the block's globals replace them.
const runtimeConsole = globalThis.console;
const denoCore = Deno[Deno.internal]?.core;

function sealStandardStreams() {
  for (const rid of [0, 1, 2]) {
    try {
      denoCore.close(rid);
    } catch {
      // closed already (stdin, by the bootstrap's reading of it)
    }
  }
  for (const key of Reflect.ownKeys(runtimeConsole)) {
    if (typeof runtimeConsole[key] !== "function") continue;
    const replacement = Object.hasOwn(blockConsole, key) ? (...args) => blockConsole[key](...args) : () => {};
    Object.defineProperty(runtimeConsole, key, { value: replacement, writable: false, configurable: false });
  }
  // Not frozen: node:console, when loaded, adds its Console to it (and then freezes it).
}

// -- the block's globals -----------------------------------------------------------------

function defineGlobal(name, value) {
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
}

function notAvailable(what) {
  // A plain function, so that `new` reaches the throw instead of "not a constructor".
  return function () {
    throw new NotCapable(`${what} is not available to content blocks`);
  };
}

defineGlobal("SymposiumError", SymposiumError);
defineGlobal("console", blockConsole);
// A nested Worker would be a second V8 isolate in this process, outside the limits this
// run was sized for (it could not even reserve its code range under RLIMIT_DATA).
defineGlobal("Worker", notAvailable("new Worker()"));

// close() would end the worker silently, leaving the bootstrap waiting for a result until
// the wall clock runs out: it ends the run instead, at once and with a reason.
defineGlobal("close", function close() {
  finish(false, new Error("The block called close(): the run ended without a result"));
});

// Deno.* stays as a browser-like worker with no permissions sees it, minus what would
// reveal the server (the binary's path, which Deno gives out without a permission; a
// neutral path keeps node:process, which reads it, working) or bypass the console (raw
// standard streams).
const denoView = Object.create(null);
for (const key of Reflect.ownKeys(Deno)) {
  // Deno.internal is the key to Deno's internals (see sealStandardStreams): neither it
  // nor what it keys is the block's.
  if (["execPath", "stdin", "stdout", "stderr", "internal"].includes(key) || key === Deno.internal) continue;
  Object.defineProperty(denoView, key, Object.getOwnPropertyDescriptor(Deno, key));
}
denoView.execPath = () => "/usr/local/bin/deno";
for (const stream of ["stdin", "stdout", "stderr"]) {
  Object.defineProperty(denoView, stream, { get: notAvailable(`Deno.${stream}`), enumerable: false });
}
// A block resolves no names (see NODE_DNS_EXPORTS in isolates/pool.py): Deno.resolveDns
// would be refused by the Worker's permissions anyway, with a message naming the server's
// resolver; this says why instead, before anything is asked.
function refusesNames(what) {
  return function () {
    throw new NotCapable(`${what} is not available to content blocks: a block resolves no names. symposium.network.fetch(url) resolves and checks the host itself.`);
  };
}
denoView.resolveDns = refusesNames("Deno.resolveDns()");
Object.defineProperty(globalThis, "Deno", { value: Object.freeze(denoView), writable: false, configurable: false, enumerable: true });
sealStandardStreams();

function startProcessGlobal(env) {
  const frozenEnv = Object.freeze(Object.assign(Object.create(null), env));
  Object.defineProperty(globalThis, "process", {
    value: Object.freeze({ env: frozenEnv }),
    writable: false,
    configurable: false,
    enumerable: false,
  });
}

// -- running the block -------------------------------------------------------------------

let finished = false;

function finish(ok, value) {
  if (finished) return;
  finished = true;
  for (const entry of pending.values()) clearTimeout(entry.timer);
  if (ok) {
    try {
      checkSendable(value, "the result", new Set());
      post({ type: "done", ok: true, result: value === undefined ? null : value });
    } catch (error) {
      const message = error instanceof SymposiumError ? error.message.replace(/^the result/, "The block's result") : scrub(error?.message ?? error);
      post({ type: "done", ok: false, error: { name: "TypeError", message: `${message}` } });
    }
  } else {
    post({ type: "done", ok: false, error: describeError(value) });
  }
}

addListener("error", (event) => {
  event.preventDefault();
  finish(false, event.error ?? event.message);
});

addListener("unhandledrejection", (event) => {
  event.preventDefault();
  finish(false, event.reason);
});

async function runBlock(start) {
  // main.js has checked these are non-negative integers.
  config.callTimeoutMs = start.callTimeoutMs;
  config.maxInFlight = start.maxInFlight;
  config.consoleCap = start.consoleCap;
  blockName = start.name;
  defineGlobal("symposium", buildApi(start.operations));
  startProcessGlobal(start.env ?? {});
  // Deno reads a module's language from its media type: a block saved as TypeScript
  // (its file name ends in .ts) is type-stripped and run like any other.
  const mediaType = /\.m?ts$/.test(blockName) ? "application/typescript" : "text/javascript";
  blockUrl = URL.createObjectURL(new Blob([start.code], { type: mediaType }));
  let module;
  try {
    post({ type: "started" });
    module = await import(blockUrl);
  } catch (error) {
    return finish(false, error);
  }
  try {
    if (start.entry === "fetch") return finish(true, await answerRequest(module.default, start.input));
    const result = typeof module.default === "function" ? await module.default(start.input ?? null) : null;
    finish(true, result);
  } catch (error) {
    finish(false, error);
  }
}

// An HTTP request to the block's endpoint, as the platform serialised it:
// {method, url, headers: [[name, value], ...], body: Uint8Array | null}. The block's
// default export is an object with fetch(request), as in Cloudflare Workers and Deno
// Deploy; its Response is serialised back the same way for the platform to send.
async function answerRequest(handler, serialised) {
  if (handler === null || typeof handler !== "object" || typeof handler.fetch !== "function") {
    throw new TypeError("This block has no HTTP handler: its default export must be an object with a fetch(request) method");
  }
  const { method, url, headers, body } = serialised ?? {};
  const request = new Request(url, {
    method,
    headers,
    body: body && body.length && method !== "GET" && method !== "HEAD" ? body : undefined,
  });
  let response = await handler.fetch(request);
  if (typeof response === "string") response = new Response(response);
  if (!(response instanceof Response)) {
    throw new TypeError("The block's fetch() must return a Response (or a string)");
  }
  return {
    status: response.status,
    headers: [...response.headers],
    body: new Uint8Array(await response.arrayBuffer()),
  };
}

addListener("message", (event) => {
  const message = event.data;
  if (message?.type === "reply") settle(message);
  else if (message?.type === "start" && blockUrl === null) runBlock(message);
});

// What runs use is loaded and compiled lazily by Deno on first use: the module loader
// (every run), Request, Response and Headers (every HTTP request's answer). Using each
// once here, before "ready", takes that cost off the run. The module loader is primed
// always: every block is imported. The rest only a warm spare primes, which waits in
// the pool for its run (main.js sets `spare`): Request and Response (7 and 5 ms of a
// cold start, measured), TypeScript's transpiler and the timers (Node's, which Deno
// loads on the first setTimeout: 10-20 ms; every call of the proxy API sets one). An
// isolate started for a run that is waiting leaves them to the block that needs them.
async function primeLazyParts() {
  const sources = { "text/javascript": "export default (x = 1) => x;" };
  if (spare) sources["application/typescript"] = "export default (x: number = 1) => x;";
  for (const [type, source] of Object.entries(sources)) {
    const url = URL.createObjectURL(new Blob([source], { type }));
    await import(url);
    URL.revokeObjectURL(url);
  }
  if (spare) {
    const request = new Request("http://warm.invalid/", { method: "POST", headers: [["content-type", "text/plain"]], body: new Uint8Array(1) });
    await request.arrayBuffer();
    const response = new Response("warm", { status: 200, headers: [["x-warm", "1"]] });
    [...response.headers];
    await response.arrayBuffer();
    clearTimeout(setTimeout(() => {}, 0));
  }
  buildApi({ readFile: "files", "canvas.draw": "canvas" }); // not the block's: a run builds its own
}

primeLazyParts().catch(() => {}).finally(() => post({ type: "ready" }));
