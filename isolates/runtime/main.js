// The trusted bootstrap of an isolate: the only JavaScript in the process that talks to
// the broker. Started by isolates/pool.py under isolates/sandbox.py as
//
//   deno run --allow-net=127.0.0.1:PORT --allow-read=<this folder>/worker.js ... main.js PORT
//
// 1. Creates the block's Web Worker (zero Deno permissions) with worker.js loaded, and
//    prints "ready" on stdout: the isolate is now warm.
// 2. Reads its first line on stdin, {"key": "...", "mark": "..."} (the mark signs its own
//    lines on stderr, see fatal()), opens its connection to the broker at once
//    (ws://127.0.0.1:PORT/ws/isolate/) and says there that it waits, with its key. Its
//    run then comes one of two ways: bound by the pool to that connection, the run's
//    "start" is the first frame on it; or as an assignment, one more JSON line on stdin,
//    {"url": "ws://127.0.0.1:PORT/...", "token": "..."}, after which it says hello with
//    the token on that connection (or a new one).
// 3. Relays frames: "start" to the worker (with the operations the broker serves, from
//    which the worker builds the block's `symposium` API); the worker's calls, logs and result to the
//    broker; the broker's replies back to the worker; "stop" ends the process at once.
// 4. Exits after the block's "done" or when the broker goes away: one run per process.
//
// The worker runs untrusted code, so every message from it is checked here: only the
// frame types of the protocol, at most maxInFlight calls outstanding, console output
// capped at consoleCap bytes (each line counting CONSOLE_LINE_COST more), one "started" and one "done". The token never enters the
// worker. Binary values are encoded here, as {"$bytes": "<base64>"}.

const EXIT_DONE = 0; // the block finished (successfully or not) and "done" was sent
const EXIT_NO_ASSIGNMENT = 10; // stdin closed before an assignment came: the pool let it go
const EXIT_BAD_ASSIGNMENT = 11; // the assignment or the start frame was malformed
const EXIT_BROKER_GONE = 12; // the websocket closed or failed before "done"
const EXIT_STOPPED = 13; // the broker sent "stop"
const EXIT_RUNTIME_FAILED = 14; // the worker failed before the block was started

const LOG_LEVELS = new Set(["log", "info", "warn", "error", "debug"]);
const MAX_ASSIGNMENT_BYTES = 64 * 1024;
const MAX_BLOCK_NAME = 100;

const port = Number(Deno.args[0]);
const encoder = new TextEncoder();

// The isolate's mark, from the assignment: the pool believes a line of stderr written
// after the assignment to be the runtime's only when it carries the mark (the block's
// worker shares the process's stderr, and never sees the mark).
let stderrMark = null;

function fatal(code, message) {
  // stderr is read by the pool (bounded) and never shown to the block's author as is.
  const prefix = stderrMark === null ? "symposium-runtime:" : `symposium-runtime[${stderrMark}]:`;
  Deno.stderr.writeSync(encoder.encode(`${prefix} ${String(message).replace(/[\r\n]+/g, " ")}\n`));
  Deno.exit(code);
}

// -- JSON with binary --------------------------------------------------------------------

function encodeFrame(frame) {
  return JSON.stringify(frame, (_key, value) => {
    if (value instanceof ArrayBuffer) return { $bytes: new Uint8Array(value).toBase64() };
    if (ArrayBuffer.isView(value)) return { $bytes: new Uint8Array(value.buffer, value.byteOffset, value.byteLength).toBase64() };
    return value;
  });
}

function decodeFrame(text) {
  return JSON.parse(text, (_key, value) => {
    if (value !== null && typeof value === "object" && typeof value.$bytes === "string" && Object.keys(value).length === 1) {
      return Uint8Array.fromBase64(value.$bytes);
    }
    return value;
  });
}

// -- the worker --------------------------------------------------------------------------

// A warm spare (the pool's "spare" argument) waits in the pool for its run, and prepares
// more before it says ready than an isolate started for a run that is waiting should:
// TypeScript's transpiler and the timers (worker.js, primeLazyParts; primeTimers below).
const spare = Deno.args[1] === "spare";
const workerSource = `const spare = ${spare};\n` + await Deno.readTextFile(new URL("./worker.js", import.meta.url));
const worker = new Worker(URL.createObjectURL(new Blob([workerSource], { type: "text/javascript" })), {
  type: "module",
  name: "block",
  deno: { permissions: "none" },
});

let workerReady;
const ready = new Promise((resolve) => (workerReady = resolve));

// Run state, set from the start frame.
let ws = null;
let run = null; // {callTimeoutMs, maxInFlight, consoleCap, maxFrameBytes, name}
let startedSent = false;
let doneSent = false;
let consoleBytes = 0;
let consoleTruncated = false;
const inFlight = new Map(); // call id -> expiry timer
let lastCallId = 0;

function sendToBroker(frame) {
  ws.send(typeof frame === "string" ? frame : encodeFrame(frame));
}

function replyToWorker(id, code, message) {
  worker.postMessage({ type: "reply", id, ok: false, error: { code, message } });
}

function scrub(text) {
  return String(text)
    .replace(/blob:null\/[0-9a-f-]{36}/g, run?.name ?? "block.js")
    .replace(/file:\/\/\S+/g, "<runtime>");
}

function finishAndExit() {
  // Close after the queued frames; exit on close, or shortly after if the broker lingers.
  setTimeout(() => Deno.exit(EXIT_DONE), 2000);
  try {
    ws.close(1000, "done");
  } catch {
    Deno.exit(EXIT_DONE);
  }
}

function relayCall(message) {
  const { id, op, args } = message;
  if (!Number.isSafeInteger(id) || id <= lastCallId) return; // not a call the runtime made
  lastCallId = id;
  if (typeof op !== "string" || op.length > 64) return replyToWorker(id, "INVALID_ARGUMENT", "Unknown operation");
  if (inFlight.size >= run.maxInFlight) {
    return replyToWorker(id, "RATE_LIMITED", `${run.maxInFlight} capability calls are already in flight; await some before making more`);
  }
  let text;
  try {
    text = encodeFrame({ type: "call", id, op, args });
  } catch (error) {
    return replyToWorker(id, "INVALID_ARGUMENT", `symposium.${op}: the arguments cannot be sent as JSON (${scrub(error.message)})`);
  }
  if (run.maxFrameBytes && text.length * 3 > run.maxFrameBytes) {
    // UTF-16 units to UTF-8 bytes is 1 to 3: measure exactly only when it may matter.
    const bytes = text.length > run.maxFrameBytes ? text.length : encoder.encode(text).length;
    if (bytes > run.maxFrameBytes) {
      return replyToWorker(id, "INVALID_ARGUMENT", `symposium.${op}: the arguments are too large (${bytes} bytes encoded; the limit is ${run.maxFrameBytes})`);
    }
  }
  // The worker gives up on a call after callTimeoutMs; so does the in-flight count here,
  // or a broker that never answers would starve the block of calls for good.
  inFlight.set(id, setTimeout(() => inFlight.delete(id), run.callTimeoutMs));
  sendToBroker(text);
}

// What a console line costs against the cap besides its text: its framing, so that
// empty lines are not free (the broker counts alike, isolates/floods.py).
const CONSOLE_LINE_COST = 32;
// Lines faster than this are a flood, and end the run (with the broker's own reason,
// isolates/floods.py, which counts alike): measured here, where the lines are made, not
// where a busy broker reads them later.
const CONSOLE_BURST = 10000;
const CONSOLE_LINES_PER_SECOND = 1000;
const CONSOLE_FLOOD = `The run was ended: it wrote console lines faster than ${CONSOLE_LINES_PER_SECOND} a second (after a first ${CONSOLE_BURST}). Log less often, or gather lines and log them together.`;
let lineTokens = CONSOLE_BURST;
let lineTokensAt = performance.now();

function consoleFlooding() {
  const now = performance.now();
  lineTokens = Math.min(CONSOLE_BURST, lineTokens + ((now - lineTokensAt) / 1000) * CONSOLE_LINES_PER_SECOND);
  lineTokensAt = now;
  if (lineTokens < 1) return true;
  lineTokens -= 1;
  return false;
}

function relayLog(message) {
  if (consoleTruncated) return;
  if (consoleFlooding()) {
    return relayDone({ ok: false, error: { name: "Error", code: "RATE_LIMITED", message: CONSOLE_FLOOD } });
  }
  const level = LOG_LEVELS.has(message.level) ? message.level : "log";
  let text = String(message.text);
  const t = Number.isFinite(message.t) ? message.t : Date.now();
  const room = Math.max(0, run.consoleCap - consoleBytes - CONSOLE_LINE_COST);
  let bytes = encoder.encode(text.length > room ? text.slice(0, room + 1) : text).length;
  if (bytes > room || consoleBytes + CONSOLE_LINE_COST > run.consoleCap) {
    // Keep what fits (cut on a character boundary), then say that the rest is gone.
    let cut = text.slice(0, room);
    while (encoder.encode(cut).length > room) cut = cut.slice(0, -1);
    if (cut.length) sendToBroker({ type: "log", level, text: cut, t });
    consoleBytes = run.consoleCap;
    consoleTruncated = true;
    sendToBroker({
      type: "log",
      level: "warn",
      text: `[console output truncated: the limit of ${run.consoleCap} bytes was reached; later output is discarded]`,
      t: Date.now(),
    });
    return;
  }
  consoleBytes += bytes + CONSOLE_LINE_COST;
  sendToBroker({ type: "log", level, text, t });
}

function relayDone(message) {
  doneSent = true;
  let frame;
  if (message.ok === true) {
    try {
      frame = encodeFrame({ type: "done", ok: true, result: message.result ?? null });
    } catch (error) {
      frame = { type: "done", ok: false, error: { name: "TypeError", message: `The block's result cannot be sent as JSON (${scrub(error.message)})` } };
    }
  } else {
    const error = message.error ?? {};
    const described = { name: String(error.name ?? "Error").slice(0, 200), message: String(error.message ?? "") };
    if (error.code !== undefined) described.code = String(error.code).slice(0, 100);
    if (error.stack !== undefined) described.stack = String(error.stack);
    frame = { type: "done", ok: false, error: described };
  }
  for (const timer of inFlight.values()) clearTimeout(timer);
  sendToBroker(frame);
  finishAndExit();
}

worker.onmessage = (event) => {
  const message = event.data;
  if (message === null || typeof message !== "object") return;
  if (message.type === "ready") return workerReady();
  if (run === null || doneSent) return; // nothing may reach the broker before start or after done
  switch (message.type) {
    case "started":
      if (!startedSent) {
        startedSent = true;
        sendToBroker({ type: "started" });
      }
      return;
    case "call":
      return relayCall(message);
    case "log":
      return relayLog(message);
    case "done":
      return relayDone(message);
  }
};

worker.onerror = (event) => {
  // Errors the worker's own handlers did not catch (the runtime itself failing).
  event.preventDefault();
  if (run === null) fatal(EXIT_RUNTIME_FAILED, `the block's worker failed to start: ${event.message}`);
  if (!doneSent) relayDone({ ok: false, error: { name: "Error", message: scrub(event.message) } });
};

// -- the broker --------------------------------------------------------------------------

function positiveInt(value, fallback, minimum) {
  return Number.isSafeInteger(value) && value >= minimum ? value : fallback;
}

function blockName(name) {
  // A file name only: the block is shown under it in stack traces and messages.
  const base = String(name ?? "").split(/[\\/]/).pop().replace(/[\u0000-\u001f\u007f]/g, "").slice(0, MAX_BLOCK_NAME);
  return base || "block.js";
}

// The operations the broker serves, {name: capability}: names like "readFile" or
// "canvas.draw". The worker builds the block's `symposium` API from them.
const OPERATION_NAME = /^[A-Za-z][A-Za-z0-9]{0,30}(\.[A-Za-z][A-Za-z0-9]{0,30})?$/;

function operationTable(operations) {
  if (operations === null || typeof operations !== "object" || Array.isArray(operations)) {
    fatal(EXIT_BAD_ASSIGNMENT, "the start frame names no operations");
  }
  const table = {};
  for (const [name, capability] of Object.entries(operations)) {
    if (!OPERATION_NAME.test(name) || name.startsWith("utils.") || name === "utils" || typeof capability !== "string" || capability.length > 40) {
      fatal(EXIT_BAD_ASSIGNMENT, "the start frame names a malformed operation");
    }
    table[name] = capability;
  }
  return table;
}

function onStart(frame) {
  if (run !== null) return;
  if (typeof frame.code !== "string") fatal(EXIT_BAD_ASSIGNMENT, "the start frame has no code");
  const operations = operationTable(frame.operations);
  const env = {};
  if (frame.env && typeof frame.env === "object") {
    for (const [key, value] of Object.entries(frame.env)) if (typeof value === "string") env[key] = value;
  }
  lineTokensAt = performance.now();
  run = {
    name: blockName(frame.name),
    callTimeoutMs: positiveInt(frame.callTimeoutMs, 30000, 1),
    maxInFlight: positiveInt(frame.maxInFlight, 16, 1),
    consoleCap: positiveInt(frame.consoleCap, 1024 * 1024, 0),
    maxFrameBytes: positiveInt(frame.maxFrameBytes, 0, 0),
  };
  worker.postMessage({
    type: "start",
    code: frame.code,
    name: run.name,
    input: frame.input ?? null,
    entry: frame.entry === "fetch" ? "fetch" : "default",
    env,
    operations,
    callTimeoutMs: run.callTimeoutMs,
    maxInFlight: run.maxInFlight,
    consoleCap: run.consoleCap,
  });
  if (!spare) primeTimers();
}

// A reply larger than one websocket message may carry (Deno's client drops messages
// over 64 MiB) arrives as "part" frames: text slices of one frame, the last one marked.
let frameParts = [];

function onBrokerFrame(event) {
  if (typeof event.data !== "string") return;
  let frame;
  try {
    frame = decodeFrame(event.data);
  } catch {
    return;
  }
  if (frame === null || typeof frame !== "object") return;
  if (frame.type === "part") {
    if (typeof frame.text !== "string") return;
    frameParts.push(frame.text);
    if (frame.last === true) {
      const text = frameParts.join("");
      frameParts = [];
      return onBrokerFrame({ data: text });
    }
    return;
  }
  switch (frame.type) {
    case "start":
      return onStart(frame);
    case "reply":
      if (inFlight.has(frame.id)) {
        clearTimeout(inFlight.get(frame.id));
        inFlight.delete(frame.id);
        worker.postMessage(frame);
      }
      return;
    case "stop":
      Deno.exit(EXIT_STOPPED);
  }
}

// The pool's lines on stdin: at spawn {"key", "mark"}; then, unless the run is bound to
// this isolate's waiting connection, the assignment {"url", "token"}.
// Deno.stdin.read(), not Deno.stdin.readable: the web stream costs some 11 ms of this
// thread to set up, in every isolate's start.
const stdinChunk = new Uint8Array(4096);
let stdinBuffered = new Uint8Array(0);

async function readLine() {
  // The next line, or null once stdin is closed.
  while (true) {
    const newline = stdinBuffered.indexOf(10);
    if (newline >= 0) {
      const line = new TextDecoder().decode(stdinBuffered.subarray(0, newline));
      stdinBuffered = stdinBuffered.slice(newline + 1);
      return line;
    }
    if (stdinBuffered.length > MAX_ASSIGNMENT_BYTES) fatal(EXIT_BAD_ASSIGNMENT, "the assignment line is too long");
    const read = await Deno.stdin.read(stdinChunk);
    if (read === null) return null;
    const joined = new Uint8Array(stdinBuffered.length + read);
    joined.set(stdinBuffered);
    joined.set(stdinChunk.subarray(0, read), stdinBuffered.length);
    stdinBuffered = joined;
  }
}

// A line from the pool on stdin, as JSON; anything else ends the isolate.
function parseLine(line, what) {
  try {
    return JSON.parse(line);
  } catch {
    fatal(EXIT_BAD_ASSIGNMENT, `${what} is not JSON`);
  }
}

function parseIdentity(line) {
  // The isolate's key (for its waiting connection) and mark (for its stderr lines).
  if (line === null) Deno.exit(EXIT_NO_ASSIGNMENT);
  const { key, mark } = parseLine(line, "the isolate's first line") ?? {};
  if (typeof mark === "string" && /^[0-9a-f]{16,64}$/.test(mark)) stderrMark = mark;
  return typeof key === "string" && /^[A-Za-z0-9_-]{16,100}$/.test(key) ? key : null;
}

function parseAssignment(line) {
  const { url, token } = parseLine(line, "the assignment") ?? {};
  if (typeof token !== "string" || !token || token.length > 1024) fatal(EXIT_BAD_ASSIGNMENT, "the assignment has no token");
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    fatal(EXIT_BAD_ASSIGNMENT, "the assignment's url is not a URL");
  }
  // Deno's --allow-net admits only this address anyway; say so plainly if it differs.
  if (parsed.protocol !== "ws:" || parsed.hostname !== "127.0.0.1" || Number(parsed.port) !== port) {
    fatal(EXIT_BAD_ASSIGNMENT, `the broker must be at ws://127.0.0.1:${port}/`);
  }
  return { url: parsed.href, token };
}

// The connection to the broker is opened while the isolate waits in the warm pool, and
// the isolate says on it that it waits ("wait" with its key): the pool then binds the
// run to this connection in memory, and the run's start is the first frame that comes
// on it, with no assignment on stdin and no hello (isolates/waiting.py). Until then the
// broker gives it nothing. When the pool assigns the run before that (the connection
// not open yet, or gone: the server restarted its listener, say), the assignment comes
// on stdin, and the isolate says hello on this connection, or on a new one.
const brokerUrl = `ws://127.0.0.1:${port}/ws/isolate/`;
const key = parseIdentity(await readLine());
let assigned = false;
let early = null;
let bindRun;
const bound = new Promise((resolve) => (bindRun = resolve));
function openEarly() {
  const socket = new WebSocket(brokerUrl);
  socket.onopen = () => {
    if (key !== null && early === socket && !assigned) socket.send(JSON.stringify({ type: "wait", key }));
  };
  socket.onmessage = (event) => {
    if (early === socket && !assigned) bindRun(event);
  };
  socket.onclose = () => {
    if (early === socket) early = null;
  };
  socket.onerror = socket.onclose;
  return socket;
}
early = openEarly();

// Deno loads its timers (Node's, some twenty modules) on the first use of setTimeout:
// about 20 ms, which every run would otherwise pay at its first call's timer or at its
// "done" (finishAndExit sets one, and the done frame leaves only after that returns).
// A spare loads them while it waits; an isolate started for a waiting run, once the
// block's start is with the worker, while the block begins.
function primeTimers() {
  clearTimeout(setTimeout(() => {}, 0));
}
if (spare) primeTimers();
// The start's path, compiled before the run needs it: a frame decoded and encoded, an
// operation table read, a message cloned to the worker (which ignores its type).
decodeFrame(JSON.stringify({ type: "start", code: "x", operations: { "a.b": "c" }, input: { a: [1, { $bytes: "AA==" }] } }));
operationTable({ readFile: "files", "canvas.draw": "canvas" });
encodeFrame({ type: "done", ok: true, result: { status: 200, headers: [["a", "b"]], body: new Uint8Array(1) } });
worker.postMessage({ type: "warm", code: "x", operations: { readFile: "files" }, input: { a: 1 }, env: {} });

const assignmentLine = readLine();
await ready;
// One short line on a pipe nothing else writes to: it cannot block.
Deno.stdout.writeSync(encoder.encode("ready\n"));
const first = await Promise.race([assignmentLine.then((line) => ({ line })), bound.then((event) => ({ event }))]);
assigned = true;
if (first.event !== undefined) {
  // Bound: this frame is the run's start.
  ws = early;
} else {
  if (first.line === null) Deno.exit(EXIT_NO_ASSIGNMENT);
  const { url, token } = parseAssignment(first.line);
  const reusable = early !== null && url === brokerUrl && early.readyState <= WebSocket.OPEN;
  ws = reusable ? early : new WebSocket(url);
  if (!reusable) early?.close();
  const sayHello = () => ws.send(JSON.stringify({ type: "hello", token }));
  if (ws.readyState === WebSocket.OPEN) sayHello();
  else ws.onopen = sayHello;
}
early = null;
ws.onmessage = onBrokerFrame;
ws.onclose = () => Deno.exit(doneSent ? EXIT_DONE : EXIT_BROKER_GONE);
ws.onerror = () => {
  if (!doneSent) Deno.exit(EXIT_BROKER_GONE);
};
if (first.event !== undefined) onBrokerFrame(first.event);
