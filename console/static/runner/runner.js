// The block-runner page: an editor, a websocket to BlockRunnerConsumer, and the live view
// of a run (console, capability calls, images, files, result, figures).
//
// Everything a block produced is untrusted: it is only ever put into the page as text
// (textContent), images only as data: URLs of the image types the server sends.
// Output can be large and fast (a block printing megabytes), so lines and calls are
// queued and drawn at most once per animation frame, and only the newest lines are kept
// in the page.

import { EditorView, EditorState, keymap, Prec, indentWithTab, basicSetup, javascript, Compartment, EditorSelection, setDiagnostics, lintGutter }
  from "../vendor/codemirror/codemirror.bundle.js";
import { apiCompletionSource, apiHover } from "./api-help.js";

const boot = JSON.parse(document.getElementById("runner-boot").textContent);
const $ = (id) => document.getElementById(id);

const MAX_LINES = 2000;       // console lines kept in the page
const MAX_CALL_ROWS = 2000;   // call rows kept in the page
const FOLD_CHARS = 160;       // a longer line is folded until clicked
const MAX_LINE_CHARS = 20000; // characters of one line drawn when unfolded
const MAX_IMAGES = 24;
const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"]);
const STORAGE_KEY = "symposium-runner-draft";

// -- small helpers ----------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function humanBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function humanSeconds(s) {
  if (s == null) return "–";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

function ago(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function tenant() {
  return boot.tenants.find((t) => t.slug === state.tenant) || null;
}

// -- a list drawn in batches -------------------------------------------------------------

class BatchedList {
  constructor(container, scroller, render, { max, onDraw }) {
    Object.assign(this, { container, scroller, render, max, onDraw });
    this.queue = [];
    this.total = 0;
    this.scheduled = false;
    // Whether the view keeps to its newest line. It is the reader's choice, made by
    // scrolling (up: stop; back to the bottom: follow again), not measured when lines
    // arrive: under a flood the note above the lines appears and lines leave the top,
    // so the last position no longer says where the reader was.
    this.follow = true;
    this.scrolledTo = null; // where the view last scrolled itself
    scroller.addEventListener("scroll", () => {
      // The view's own scrolling is not the reader's choice (events of a frame come as one).
      if (this.scrolledTo != null && Math.abs(scroller.scrollTop - this.scrolledTo) < 2) return;
      this.follow = this.atBottom();
    }, { passive: true });
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollTop + s.clientHeight >= s.scrollHeight - 40;
  }

  scrollToEnd() {
    const s = this.scroller;
    if (s.scrollTop + s.clientHeight >= s.scrollHeight - 1) return;
    s.scrollTop = s.scrollHeight;
    this.scrolledTo = s.scrollTop;
  }

  push(item) {
    this.queue.push(item);
    this.total++;
    // Lines that could never be shown are dropped before they cost a DOM node.
    if (this.queue.length > this.max) this.queue.splice(0, this.queue.length - this.max);
    this.schedule();
  }

  clear() {
    this.queue = [];
    this.total = 0;
    this.follow = true;
    this.container.replaceChildren();
    this.onDraw?.(this);
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    // Background tabs get no animation frames; a timer still drains the queue there.
    if (document.hidden) setTimeout(() => this.flush(), 250);
    else requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.scheduled = false;
    if (!this.queue.length) return;
    const batch = this.queue;
    this.queue = [];
    const fragment = document.createDocumentFragment();
    for (const item of batch) fragment.append(this.render(item));
    if (batch.length >= this.max) this.container.replaceChildren(fragment);
    else {
      this.container.append(fragment);
      let extra = this.container.childElementCount - this.max;
      while (extra-- > 0) this.container.firstElementChild.remove();
    }
    this.onDraw?.(this);
    // After onDraw: what it changes above the lines (the note) moves them too.
    if (this.follow) this.scrollToEnd();
  }

  get hidden() {
    return this.total - this.container.childElementCount - this.queue.length;
  }
}

// -- page state ---------------------------------------------------------------------------

const state = {
  tenant: boot.selected,
  ws: null,
  connected: false,
  retry: 0,
  run: null, // {id, status, live, startedServer, startedLocal, files: Map, images}
  pendingStart: false,
  inputValid: true,
  history: boot.history,
  fetching: 0, // requests in flight (history, past runs)
};

const consoleView = new BatchedList($("console"), $("tab-console"), renderLine, {
  max: MAX_LINES,
  onDraw: (list) => {
    $("console-count").textContent = list.total.toLocaleString();
    updateConsoleNote();
  },
});
const callsView = new BatchedList($("calls"), $("tab-calls"), renderCall, {
  max: MAX_CALL_ROWS,
  onDraw: (list) => { $("calls-count").textContent = list.total.toLocaleString(); },
});

let consoleNotes = [];
function updateConsoleNote() {
  const notes = [...consoleNotes];
  if (consoleView.hidden > 0) notes.unshift(`${consoleView.hidden.toLocaleString()} earlier lines are not shown here (the page keeps the last ${MAX_LINES.toLocaleString()}); the run's record keeps the console up to the tenant's cap.`);
  $("console-note").hidden = !notes.length;
  $("console-note").textContent = notes.join(" ");
}

// -- the editor ---------------------------------------------------------------------------

const draft = (() => { try { return JSON.parse(localStorage.getItem(STORAGE_KEY) || "null"); } catch { return null; } })();
const starter = boot.examples[0];
const API_COMPLETION = [{ autocomplete: apiCompletionSource(boot.api) }];
// The editor's language follows the block's file name (.ts is TypeScript, as for Deno).
const languageConf = new Compartment();
const languageOf = (name) => (/\.m?ts$/.test(String(name).trim()) ? "typescript" : "javascript");
const editor = new EditorView({
  parent: $("editor"),
  state: EditorState.create({
    doc: draft?.code ?? starter.code,
    extensions: [
      basicSetup,
      languageConf.of(javascript({ typescript: languageOf(draft?.name ?? starter.name) === "typescript" })),
      lintGutter(),
      // The symposium API: completion and hover docs (api-help.js).
      // (one source for good: CodeMirror asks again whenever the set of sources changes)
      EditorState.languageData.of(() => API_COMPLETION),
      apiHover(EditorView, boot.api),
      keymap.of([indentWithTab]),
      Prec.highest(keymap.of([{ key: "Mod-Enter", run: () => { startRun(); return true; } }])),
      EditorView.updateListener.of((update) => { if (update.docChanged) saveDraft(); }),
    ],
  }),
});
window.symposiumEditor = editor; // for tests and the curious: the page's one editor
window.symposiumRunner = state;
window.symposiumConsole = consoleView; // the console's lines, as drawn
$("input").value = draft ? draft.input ?? "" : starter.input;
$("block-name").value = draft?.name ?? starter.name;
syncLanguage();

function code() { return editor.state.doc.toString(); }
function setCode(text) { editor.dispatch({ changes: { from: 0, to: editor.state.doc.length, insert: text } }); }
function saveDraft() {
  try { localStorage.setItem(STORAGE_KEY, JSON.stringify({ code: code(), input: $("input").value, name: $("block-name").value, block: state.block?.block.slug })); } catch { /* full or disabled */ }
}

// -- the language switch -------------------------------------------------------------------
//
// JavaScript or TypeScript: the menu and the file name's extension say the same thing (the
// isolate reads the language from the name); changing either changes the other.

function syncLanguage() {
  const language = languageOf($("block-name").value);
  $("language").value = language;
  editor.dispatch({ effects: languageConf.reconfigure(javascript({ typescript: language === "typescript" })) });
  $("check-types").hidden = language !== "typescript";
}

$("language").addEventListener("change", () => {
  const name = $("block-name").value.trim() || "block.js";
  const stem = name.replace(/\.(m?[jt]s)$/, "");
  $("block-name").value = `${stem}.${$("language").value === "typescript" ? "ts" : "js"}`;
  syncLanguage();
  saveDraft();
});

// -- errors and type diagnostics in the editor --------------------------------------------
//
// A failed run's frames and a type check's diagnostics point at lines of the block: the
// line is marked in the gutter (and the code underlined) with CodeMirror's lint marks, and
// clicking a frame or a diagnostic moves the cursor there. Marks are drawn only while the
// editor holds the code they point into.

function positionOf(line, column) {
  const doc = editor.state.doc;
  if (!Number.isInteger(line) || line < 1 || line > doc.lines) return null;
  const text = doc.line(line);
  return Math.min(text.from + Math.max((column || 1) - 1, 0), text.to);
}

function markProblems(problems) {
  const doc = editor.state.doc;
  const diagnostics = [];
  for (const problem of problems) {
    let from = positionOf(problem.line, problem.column);
    if (from == null) continue;
    const line = doc.lineAt(from);
    if (from === line.to && from > line.from) from--;
    // The word at the column, or one character: what the error or diagnostic points at.
    const word = /^[\w$]+/.exec(doc.sliceString(from, line.to));
    const to = Math.min(line.to, from + (word ? word[0].length : 1));
    diagnostics.push({ from, to, severity: problem.severity === "warning" ? "warning" : "error", message: problem.message, source: problem.source });
  }
  editor.dispatch(setDiagnostics(editor.state, diagnostics));
}

function markFailure({ detail, message }) {
  const top = detail.frames && detail.frames[0];
  if (top) markProblems([{ line: top.line, column: top.column, message: `${detail.name}: ${message}`, source: "run" }]);
}

function clearProblems() {
  editor.dispatch(setDiagnostics(editor.state, []));
}

function moveCursorTo(line, column) {
  const pos = positionOf(line, column);
  if (pos == null) return banner(`The editor has no line ${line}: it holds other code than this.`, { info: true });
  editor.dispatch({ selection: EditorSelection.cursor(pos), scrollIntoView: true });
  editor.focus();
}

// A place in the block, shown as file:line:col; a click moves the editor's cursor there.
function placeButton(file, line, column, label) {
  const button = el("button", { type: "button", class: "frame mono", text: label ?? `${file}:${line}:${column}`,
                                title: "Move the cursor there", dataset: { line, column } });
  button.addEventListener("click", () => moveCursorTo(line, column));
  return button;
}

function errorParts(detail) {
  const parts = [];
  if (detail.codeFrame) parts.push(el("pre", { class: "code-frame", text: detail.codeFrame }));
  if (detail.frames && detail.frames.length) {
    const list = el("ol", { class: "stack", "aria-label": "Stack trace" });
    for (const frame of detail.frames) {
      const where = `${frame.file}:${frame.line}:${frame.column}`;
      list.append(el("li", {}, "at ", placeButton(frame.file, frame.line, frame.column, frame.function ? `${frame.function} (${where})` : where)));
    }
    parts.push(list);
  }
  return parts;
}

function showCheck(report, name) {
  const box = $("outcome");
  box.replaceChildren();
  const errors = report.diagnostics.filter((d) => d.severity === "error").length;
  box.className = report.ok ? "outcome ok check" : "outcome bad check";
  box.append(el("h3", { text: "Type check" }));
  if (!report.diagnostics.length) box.append(el("div", { class: "check-summary", text: "No type errors." }));
  else {
    box.append(el("div", { class: "check-summary", text: errors === 1 ? "1 type error" : `${errors} type errors` }));
    const list = el("ul", { class: "diagnostics" });
    for (const d of report.diagnostics) {
      const place = d.file && d.line ? placeButton(d.file, d.line, d.column) : el("span", { class: "mono", text: d.file || "" });
      list.append(el("li", { class: `diagnostic ${d.severity}` }, place, " ", el("span", { class: "diag-message", text: d.message }),
        d.code ? el("span", { class: "muted mono small", text: ` ${d.code}` }) : null));
    }
    box.append(list);
  }
  box.hidden = false;
  markProblems(report.diagnostics.filter((d) => d.file === name && d.line)
    .map((d) => ({ line: d.line, column: d.column, message: `${d.message} (${d.code})`, severity: d.severity, source: "type check" })));
}

async function checkTypes() {
  const t = tenant();
  if (!t) return;
  const name = $("block-name").value.trim() || "block.ts";
  const button = $("check-types");
  button.disabled = true;
  button.textContent = "Checking…";
  const result = await postJSON(boot.checkUrl.replace("TENANT", encodeURIComponent(t.slug)), { code: code(), name });
  button.disabled = false;
  button.textContent = "Check types";
  if (!result.ok) return refusal(result, "The types could not be checked.");
  showCheck(result.data, name);
}

$("check-types").addEventListener("click", checkTypes);

// Examples, grouped as in the menu's definition.
{
  const select = $("examples");
  const groups = new Map();
  for (const example of boot.examples) {
    if (!groups.has(example.group)) select.append(groups.set(example.group, el("optgroup", { label: example.group })).get(example.group));
    groups.get(example.group).append(el("option", { value: example.key, text: example.title }));
  }
  select.addEventListener("change", () => {
    const example = boot.examples.find((e) => e.key === select.value);
    if (!example) return;
    $("example-note").textContent = example.note || "";
    $("example-note").hidden = !example.note;
    setCode(example.code);
    $("input").value = example.input || "";
    $("block-name").value = example.name;
    syncLanguage();
    validateInput();
    saveDraft();
    select.value = "";
    editor.focus();
  });
}

// The examples the tenant's policy refuses (the server judged each one's calls) are shown
// but cannot be picked: the menu does not offer a run that can only be refused.
function markExamples() {
  const refused = tenant()?.examples_refused || {};
  for (const option of $("examples").querySelectorAll("option[value]:not([value=''])")) {
    const example = boot.examples.find((e) => e.key === option.value);
    const why = refused[option.value];
    option.disabled = Boolean(why);
    option.textContent = why ? `${example.title} (not allowed: ${tenant().profile})` : example.title;
    option.title = why || "";
  }
}
markExamples();

// -- the input ----------------------------------------------------------------------------

function validateInput() {
  const text = $("input").value;
  const box = $("input-state");
  if (!text.trim()) {
    state.inputValid = true;
    box.className = "input-state";
    box.textContent = "No input: the default export gets undefined.";
  } else {
    try {
      JSON.parse(text);
      state.inputValid = true;
      box.className = "input-state ok";
      box.textContent = "✓ Valid JSON";
    } catch (error) {
      state.inputValid = false;
      box.className = "input-state bad";
      box.textContent = `✗ Not valid JSON: ${error.message}`;
    }
  }
  $("input").classList.toggle("invalid", !state.inputValid);
  updateButtons();
}
$("input").addEventListener("input", () => { validateInput(); saveDraft(); });
$("block-name").addEventListener("input", () => { syncLanguage(); saveDraft(); });

// -- buttons and status -------------------------------------------------------------------

function running() {
  return state.pendingStart || (state.run && state.run.live && !["succeeded", "failed", "timed_out", "killed"].includes(state.run.status));
}

function updateButtons() {
  const t = tenant();
  const canRun = Boolean(t && t.can_run);
  $("viewer-note").hidden = canRun;
  $("run").disabled = !state.connected || !canRun || !state.inputValid || running();
  $("stop").disabled = !state.connected || !canRun || !running() || state.pendingStart;
  if (state.blocks) {
    $("save").disabled = !canWrite() || (!state.block && !$("new-slug").value.trim());
    $("save").title = canWrite() ? "Save the editor's code as a new version" : "Viewers (and suspended tenants) cannot save blocks";
  }
}

function setStatus(status, label) {
  const pill = $("status");
  pill.className = `pill ${status}`;
  pill.textContent = label || status.replace("_", " ");
  if (state.run) state.run.status = status;
  updateButtons();
}

let bannerTimer = null;
function banner(message, { code = "", info = false, sticky = false, link = null } = {}) {
  const box = $("banner");
  box.replaceChildren();
  box.className = info ? "banner info" : "banner";
  if (code) box.append(el("b", { class: "mono", text: code }));
  box.append(message);
  if (link) box.append(" ", el("a", { href: link.href, text: link.text }));
  box.hidden = false;
  clearTimeout(bannerTimer);
  if (!sticky) bannerTimer = setTimeout(() => { box.hidden = true; }, info ? 4000 : 10000);
}

// -- the output pane ----------------------------------------------------------------------

function resetOutput(run) {
  state.run = run;
  consoleNotes = [];
  consoleView.clear();
  callsView.clear();
  $("images").replaceChildren();
  $("images").hidden = true;
  $("file-list").replaceChildren();
  $("files").hidden = true;
  $("outcome").hidden = true;
  $("run-id").textContent = run ? `run ${run.id}` : "";
  $("run-when").textContent = "";
  $("load-code").hidden = !(run && run.code);
  for (const id of ["fig-duration", "fig-calls", "fig-bytes", "fig-memory"]) $(id).textContent = "–";
  updateConsoleNote();
}

function renderLine(line) {
  const level = line.level || "log";
  const full = String(line.text ?? "");
  const body = el("span", { class: "x" });
  if (full.length <= FOLD_CHARS) body.textContent = full;
  else {
    // A long line is folded to its start; a click shows (up to MAX_LINE_CHARS of) it.
    const shown = full.slice(0, MAX_LINE_CHARS);
    const hidden = full.length - FOLD_CHARS;
    const more = el("button", { class: "more", type: "button", text: `… ${hidden.toLocaleString()} more characters` });
    body.append(full.slice(0, FOLD_CHARS), more);
    more.addEventListener("click", () => {
      body.textContent = shown + (full.length > MAX_LINE_CHARS ? ` … (${(full.length - MAX_LINE_CHARS).toLocaleString()} more characters not shown; the run's record has the console)` : "");
    });
  }
  const row = el("div", { class: `line ${level}` },
    el("span", { class: "t", text: line.time ?? "" }),
    el("span", { class: "lv", text: level === "system" ? "" : level }),
    body);
  if (line.title) row.title = line.title;
  return row;
}

function renderCall(call) {
  const error = call.code ? el("span", {}, el("span", { class: "err-code", text: call.code }), " ", el("span", { class: "err-msg", text: call.message || "" })) : "";
  const row = el("tr", { class: `call ${call.outcome}` },
    el("td", { class: "mono small", text: call.time ?? "" }),
    el("td", { class: "op", text: call.op }),
    el("td", { class: "target", text: call.target || "", title: call.target || "" }),
    el("td", {}, el("span", { class: `badge ${call.outcome}`, text: call.outcome })),
    el("td", { class: "num", text: call.ms != null ? Number(call.ms).toFixed(1) : "" }),
    el("td", { class: "error" }, error));
  return row;
}

function relTime(run, serverMs, localMs) {
  // Logs carry the isolate's clock; calls are timed when they reach the page.
  // The isolate may print a moment before the broker notes the start: never below zero.
  const since = (t, start) => `+${(Math.max(0, t - start) / 1000).toFixed(3)}s`;
  if (serverMs != null && run.startedServer != null) return since(serverMs, run.startedServer);
  if (localMs != null && run.startedLocal != null) return since(localMs, run.startedLocal);
  return "";
}

function addFile(path, url) {
  const run = state.run;
  if (!run || !path || !url || run.files.has(path)) return;
  run.files.set(path, url);
  drawFiles();
}

function drawFiles() {
  const list = $("file-list");
  list.replaceChildren();
  for (const [path, url] of state.run.files) list.append(el("li", {}, el("a", { href: url, text: path, download: "" })));
  $("files").hidden = state.run.files.size === 0;
}

function addImage(event) {
  const run = state.run;
  if (!IMAGE_TYPES.has(event.mime) || typeof event.data !== "string") return;
  if (run.images >= MAX_IMAGES) return;
  run.images++;
  const src = `data:${event.mime};base64,${event.data}`;
  const img = el("img", { src, alt: `Image ${run.images} exported by the block` });
  img.addEventListener("click", () => img.classList.toggle("big"));
  const bytes = Math.floor(event.data.length * 3 / 4);
  const ext = event.mime.split("/")[1];
  $("images").append(el("figure", { class: "image" }, img,
    el("figcaption", {}, `${event.width ?? "?"}×${event.height ?? "?"} ${ext.toUpperCase()} · ${humanBytes(bytes)} · `,
      el("a", { href: src, download: `${run.id}-${run.images}.${ext}`, text: "download" }))));
  $("images").hidden = false;
}

function showFigures(f) {
  $("fig-duration").textContent = humanSeconds(f.duration);
  $("fig-calls").textContent = f.calls != null ? f.calls.toLocaleString() : "–";
  $("fig-bytes").textContent = f.bytes_in != null ? `${humanBytes(f.bytes_in)} / ${humanBytes(f.bytes_out)}` : "–";
  $("fig-memory").textContent = humanBytes(f.peak_memory_bytes);
  $("fig-cpu").textContent = f.cpu_ms != null ? humanSeconds(f.cpu_ms / 1000) : "–";
}

function showOutcome(f) {
  const box = $("outcome");
  box.replaceChildren();
  if (f.status === "succeeded") {
    box.className = "outcome ok";
    const text = f.result === undefined || f.result === null ? "(no result: the block returned nothing)" : JSON.stringify(f.result, null, 2);
    box.append(el("h3", { text: "Result" }), el("pre", { class: "result", text }));
  } else {
    box.className = "outcome bad";
    const detail = f.error_detail || null;
    const named = detail && detail.name && detail.name !== "SymposiumError" ? el("span", { class: "error-name", text: `${detail.name}: ` }) : null;
    box.append(el("h3", { text: { timed_out: "Timed out", killed: "Stopped", refused: "Not started" }[f.status] || "Error" }),
      el("div", {}, el("span", { class: "code-badge error-code", text: f.error_code || "ERROR" }), named, el("span", { class: "error-message", text: f.error || "" })));
    if (detail) {
      box.append(...errorParts(detail));
      // The line is marked only in the code that ran: not over other code in the editor.
      const run = state.run;
      if (run) run.failure = { detail, message: f.error || "" };
      if (run && (run.ranCode ?? run.code) === code()) markFailure(run.failure);
    }
  }
  box.hidden = false;
}

function storedConsole(entries, startedIso) {
  // The record's entries: one per console call, with when it was printed (ms from the
  // run's start; null for runs recorded before times were kept).
  const started = startedIso ? Date.parse(startedIso) : NaN;
  return (entries || []).map((entry) => {
    const line = { level: entry.level, text: entry.text };
    if (typeof entry.ms === "number") {
      line.time = `+${(entry.ms / 1000).toFixed(3)}s`;
      if (Number.isFinite(started)) line.title = new Date(started + entry.ms).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3 });
    }
    return line;
  });
}

function showFinished(f) {
  const run = state.run;
  run.live = false;
  setStatus(f.status, { succeeded: "succeeded", failed: "failed", timed_out: "timed out", killed: "stopped" }[f.status]);
  showFigures(f);
  showOutcome(f);
  for (const file of f.files || []) addFile(file.path, file.url);
  if (f.files) {
    // The final list is the record's: files deleted again are gone from it.
    const keep = new Set(f.files.map((file) => file.path));
    for (const path of [...run.files.keys()]) if (!keep.has(path)) run.files.delete(path);
    drawFiles();
  }
  if (f.console_complete === false && typeof f.console === "string") {
    consoleView.clear();
    consoleNotes.push("Some lines did not reach the page live; this is the console as stored with the run.");
    for (const line of storedConsole(f.console_entries, run.startedIso ?? (run.startedServer ? new Date(run.startedServer).toISOString() : null))) consoleView.push(line);
    // The record keeps what was printed, not the platform's notice about the cap.
    if (f.console_truncated) consoleView.push({ level: "warn", text: "Console output reached this tenant's cap; the rest of what the block printed was dropped." });
  }
  if (f.console_truncated) consoleNotes.push("The block printed more than this tenant's console cap; the rest was dropped.");
  // Only the platform's own line: say so rather than leave an empty console to puzzle over.
  if (consoleView.total <= 1 && f.status === "succeeded") {
    consoleView.push({ level: "system", text: "The block printed nothing (its result, if it returned one, is shown above)." });
  }
  updateConsoleNote();
  refreshHistory();
  // The open block's recent runs include this one now.
  if (state.block) refreshBlockRuns();
}

// -- the websocket ------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${boot.wsPath}`);
  state.ws = ws;
  setConnection("connecting…", "");
  ws.addEventListener("message", (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch { return; }
    handle(frame);
  });
  ws.addEventListener("close", (event) => {
    state.connected = false;
    state.pendingStart = false;
    updateButtons();
    if (event.code === 4401) return setConnection("logged out", "down");
    setConnection("reconnecting…", "down");
    const delay = Math.min(10000, 500 * 2 ** state.retry++);
    setTimeout(connect, delay);
  });
}

function setConnection(text, cls) {
  $("conn").className = `conn ${cls}`;
  $("conn").lastElementChild.textContent = text;
}

function send(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    banner("Not connected to the server; retrying.", { code: "OFFLINE" });
    return false;
  }
  state.ws.send(JSON.stringify(frame));
  return true;
}

function handle(frame) {
  const run = state.run;
  switch (frame.type) {
    case "ready":
      state.connected = true;
      state.retry = 0;
      setConnection("connected", "up");
      // A run that was going when the connection dropped: follow it again.
      if (run && run.live && run.id) {
        run.resuming = true;
        send({ type: "watch", run: run.id });
      }
      updateButtons();
      break;
    case "error":
      state.connected = false;
      banner(frame.message, { code: frame.code, sticky: true, link: { href: `/login/?next=${encodeURIComponent(location.pathname + location.search)}`, text: "Log in" } });
      updateButtons();
      break;
    case "refused":
      if (frame.request === "start") {
        // No run began: what is on screen is another run's (perhaps another tenant's),
        // so it goes, and the pill and the outcome say the start was refused.
        state.pendingStart = false;
        resetOutput(null);
        setStatus("refused", "refused");
        showOutcome({ status: "refused", error_code: frame.code, error: frame.message });
      }
      banner(frame.message, { code: frame.code });
      updateButtons();
      break;
    case "info":
      banner(frame.message, { info: true });
      break;
    case "accepted":
      state.pendingStart = false;
      resetOutput({ id: frame.run, status: "starting", live: true, files: new Map(), images: 0, startedLocal: Date.now(), startedServer: null,
                    ranCode: state.startedCode });
      clearProblems();
      setStatus("running", "starting");
      if (frame.summary) { state.history = [frame.summary, ...state.history.filter((r) => r.id !== frame.run)]; drawHistory(); }
      break;
    case "event":
      if (!run || frame.run !== run.id) return;
      onEvent(run, frame);
      break;
    case "logs":
      // Console lines come in batches, in order.
      if (!run || frame.run !== run.id || !Array.isArray(frame.lines)) return;
      for (const line of frame.lines) onEvent(run, { event: "log", ...line });
      break;
    case "snapshot":
      if (!run || frame.run !== run.id) return;
      if (run.resuming) {
        // Back after a dropped connection: keep what is shown; the finished record
        // brings whatever was printed meanwhile.
        run.resuming = false;
        consoleNotes.push("The connection dropped for a moment; lines printed meanwhile appear when the run ends.");
        updateConsoleNote();
      } else showDetail(frame.detail, { live: true });
      break;
    case "finished":
      if (!run || frame.run !== run.id) return;
      showFinished(frame);
      break;
  }
}

function onEvent(run, event) {
  switch (event.event) {
    case "started":
      run.startedServer = typeof event.t === "number" ? event.t * 1000 : null;
      run.startedLocal = Date.now();
      setStatus("running");
      consoleView.push({ level: "system", text: "Run started in a fresh isolate.", time: "+0.000s" });
      break;
    case "log":
      consoleView.push({ level: event.level, text: event.text, time: relTime(run, event.t, Date.now()),
                         title: typeof event.t === "number" ? new Date(event.t).toISOString() : "" });
      break;
    case "call":
      callsView.push({ ...event, time: relTime(run, null, Date.now()) });
      if (event.download) addFile(String(event.target).replace(/^\/+/, ""), event.download);
      break;
    case "image":
      addImage(event);
      break;
    case "done":
      // The block's own end; "finished" follows with the figures.
      showOutcome(event.ok ? { status: "succeeded", result: event.result }
                           : { status: "failed", error_code: event.error?.code || event.error?.name, error: event.error?.message, error_detail: event.error });
      break;
  }
}

// -- run and stop -------------------------------------------------------------------------

function startRun() {
  validateInput();
  if ($("run").disabled) return;
  const t = tenant();
  const frame = { type: "start", tenant: t.slug, code: code(), input: $("input").value, name: $("block-name").value.trim() || "block.js" };
  // A run of an open block records the block, and the version whose code it runs.
  if (state.block) frame.block = state.block.block.slug;
  if (!send(frame)) return;
  state.startedCode = frame.code;
  state.pendingStart = true;
  $("banner").hidden = true;
  setStatus("starting", "starting");
}

$("run").addEventListener("click", startRun);
$("stop").addEventListener("click", () => {
  if (!state.run || !state.run.id) return;
  if (send({ type: "stop", run: state.run.id })) setStatus("stopping", "stopping");
});

// -- history ------------------------------------------------------------------------------

function drawHistory() {
  const list = $("history-list");
  list.replaceChildren();
  for (const run of state.history) {
    const meta = run.error_code ? `${run.error_code} · ${run.user || run.source}` : `${run.calls} calls · ${humanSeconds(run.duration)} · ${run.user || run.source}`;
    const item = el("li", { dataset: { run: run.id }, title: `${run.status_label} · ${new Date(run.created).toLocaleString()}` },
      el("span", { class: `dot s-${run.status}` }),
      el("span", { class: "name", text: run.name || run.id }),
      el("span", { class: "when", text: ago(run.created), title: when(run.created) }),
      el("span", { class: "meta", text: meta }));
    if (state.run && state.run.id === run.id) item.classList.add("on");
    item.addEventListener("click", () => openRun(run));
    list.append(item);
  }
  $("history-empty").hidden = state.history.length > 0;
}

async function getJSON(url) {
  state.fetching++;
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    return response.ok ? { ok: true, data: await response.json() } : { ok: false, status: response.status };
  } catch {
    return { ok: false, status: "offline" };
  } finally {
    state.fetching--;
  }
}

async function refreshHistory() {
  const t = tenant();
  if (!t) return;
  const { ok, data } = await getJSON(t.history_url);
  // Offline or refused: keep what is shown.
  if (ok && data.tenant === state.tenant) { state.history = data.runs; drawHistory(); }
}

async function openRun(summary) {
  if (running()) return banner("A run is going; stop it or wait for it to end before opening another.", { info: true });
  if (summary.status === "running" || summary.status === "queued") {
    resetOutput({ id: summary.id, status: "running", live: true, files: new Map(), images: 0, startedLocal: Date.now(), startedServer: null });
    setStatus("running", "watching");
    send({ type: "watch", run: summary.id });
    drawHistory();
    return;
  }
  const url = boot.runUrl.replace("TENANT", encodeURIComponent(state.tenant)).replace("RUN", encodeURIComponent(summary.id));
  const { ok, data: detail, status } = await getJSON(url);
  if (!ok) return banner("That run could not be loaded.", { code: String(status) });
  resetOutput({ id: detail.id, status: detail.status, live: false, files: new Map(), images: 0, code: detail.code });
  showDetail(detail, { live: false });
  drawHistory();
}

function when(iso) {
  // The date and the time to the second (a console line's own time is on hover).
  return new Date(iso).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function showDetail(detail, { live }) {
  const run = state.run;
  if (detail.created) {
    $("run-when").textContent = `started ${when(detail.created)}`;
    $("run-when").title = detail.created;
  }
  run.code = detail.code;
  run.input = detail.input;
  run.name = detail.name;
  $("load-code").hidden = !detail.code;
  consoleView.clear();
  callsView.clear();
  run.startedIso = detail.started;
  for (const line of storedConsole(detail.console_entries, detail.started)) consoleView.push(line);
  for (const call of detail.call_log || []) callsView.push({ ...call, time: new Date(call.t).toLocaleTimeString() });
  for (const file of detail.files || []) addFile(file.path, file.url);
  if (detail.status === "running" || detail.status === "queued") {
    setStatus("running", live ? "watching" : "running");
    showFigures(detail);
  } else {
    run.live = false;
    setStatus(detail.status, { succeeded: "succeeded", failed: "failed", timed_out: "timed out", killed: "stopped" }[detail.status]);
    showFigures(detail);
    showOutcome(detail);
    if (detail.console_truncated) consoleNotes.push("The block printed more than this tenant's console cap; the rest was dropped.");
  }
  consoleNotes.push(live ? "Watching a run: lines printed before you opened it appear when it ends." : "A past run: console and calls as recorded; exported images are shown only live.");
  updateConsoleNote();
}

$("load-code").addEventListener("click", () => {
  const run = state.run;
  if (!run || !run.code) return;
  setCode(run.code);
  $("input").value = run.input == null ? "" : JSON.stringify(run.input, null, 2);
  if (run.name) $("block-name").value = run.name;
  syncLanguage();
  if (run.failure) markFailure(run.failure);
  validateInput();
  saveDraft();
});
$("refresh-history").addEventListener("click", refreshHistory);

// -- saved blocks -------------------------------------------------------------------------
//
// The block menu above the editor opens one of the tenant's saved blocks; "Save version"
// saves the editor's code as its next version (or, with no block open, as the first
// version of a new block named by the slug field). The "Saved block" tab shows the
// block's endpoint, versions (diff two, open one, deploy one), schedules and runs.
// The server checks every request (membership, role, CSRF); the page only mirrors it.

function blocksUrl(rest = "") {
  return boot.blocksUrl.replace("TENANT", encodeURIComponent(state.tenant)) + rest;
}

function blockUrl(slug, rest = "") {
  return blocksUrl(`${encodeURIComponent(slug)}/${rest}`);
}

async function postJSON(url, body) {
  state.fetching++;
  try {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": boot.csrfToken },
      body: JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch { /* not JSON: an error page */ }
    return { ok: response.ok, status: response.status, data };
  } catch {
    return { ok: false, status: "offline", data: null };
  } finally {
    state.fetching--;
  }
}

function refusal(result, fallback) {
  const error = result.data && result.data.error;
  banner(error ? error.message : fallback, { code: error ? error.code : String(result.status) });
}

state.blocks = [];
state.block = null; // the open block's detail: {block, versions, schedules, runs, canWrite}

function canWrite() {
  const t = tenant();
  return Boolean(t && t.can_run && t.active);
}

async function loadBlocks() {
  const { ok, data } = await getJSON(blocksUrl());
  if (!ok || data.tenant !== state.tenant) return;
  state.blocks = data.blocks;
  const select = $("block");
  const chosen = state.block ? state.block.block.slug : "";
  select.replaceChildren(el("option", { value: "", text: "Unsaved code (not a saved block)" }));
  for (const block of state.blocks) {
    const deployed = block.deployedVersion ? `v${block.deployedVersion} deployed` : "not deployed";
    select.append(el("option", { value: block.slug, text: `${block.name || block.slug} (${block.slug}) · ${deployed}` }));
  }
  select.value = chosen;
}

async function openBlock(slug, { keepCode = false } = {}) {
  if (!slug) {
    state.block = null;
    drawBlock();
    return;
  }
  const { ok, data, status } = await getJSON(blockUrl(slug));
  if (!ok) return banner("That block could not be opened.", { code: String(status) });
  if (data.tenant !== state.tenant) return;
  state.block = data;
  $("block").value = slug;
  if (!keepCode && data.opened) {
    setCode(data.opened.code);
    $("block-name").value = `${slug}.${data.block.language === "typescript" ? "ts" : "js"}`;
    syncLanguage();
    saveDraft();
  }
  const url = new URL(location.href);
  url.searchParams.set("block", slug);
  history.replaceState(null, "", url);
  drawBlock();
  if (!keepCode) showTab("block");
}

function drawBlock() {
  const detail = state.block;
  $("block-none").hidden = Boolean(detail);
  $("block-info").hidden = !detail;
  $("new-slug").hidden = Boolean(detail);
  $("block-count").textContent = detail ? `v${detail.block.deployedVersion ?? "–"}` : "";
  updateButtons();
  if (!detail) {
    const url = new URL(location.href);
    url.searchParams.delete("block");
    history.replaceState(null, "", url);
    return;
  }
  const block = detail.block;
  $("block-title").textContent = `${block.name || block.slug} (${block.slug}, ${block.language})`;
  const link = $("endpoint-url");
  link.href = block.endpointUrl;
  link.textContent = block.endpointUrl;
  $("endpoint-access").className = `badge ${block.publicEndpoint ? "public" : "private"}`;
  $("endpoint-access").textContent = block.publicEndpoint ? "public" : "private: needs a run token";
  $("deployed-version").textContent = block.deployedVersion ? `version ${block.deployedVersion}` : "none";

  const rows = $("versions");
  rows.replaceChildren();
  detail.versions.forEach((version, i) => {
    const from = el("input", { type: "radio", name: "diff-from", value: version.number, "aria-label": `Diff from version ${version.number}` });
    const to = el("input", { type: "radio", name: "diff-to", value: version.number, "aria-label": `Diff to version ${version.number}` });
    if (i === 1 || (detail.versions.length === 1 && i === 0)) from.checked = true;
    if (i === 0) to.checked = true;
    const open = el("button", { class: "btn ghost small open-version", text: "Open", title: "Load this version's code into the editor" });
    open.addEventListener("click", () => openVersion(version.number));
    const actions = el("td", { class: "actions" }, open);
    if (version.deployed) actions.prepend(el("span", { class: "badge deployed", text: "deployed" }), " ");
    else if (detail.canWrite) {
      const older = block.deployedVersion != null && version.number < block.deployedVersion;
      const button = el("button", { class: "btn small deploy-version", text: older ? "Roll back to this" : "Deploy",
                                    dataset: { version: version.number } });
      button.disabled = !canWrite();
      button.addEventListener("click", () => deployVersion(version.number));
      actions.prepend(button, " ");
    }
    rows.append(el("tr", { dataset: { version: version.number } },
      el("td", {}, from), el("td", {}, to),
      el("td", { class: "mono", text: `v${version.number}` }),
      el("td", { text: version.message || "" }),
      el("td", { text: version.author || "" }),
      el("td", { text: ago(version.created), title: new Date(version.created).toLocaleString() }),
      actions));
  });
  $("show-diff").disabled = detail.versions.length < 2;
  $("diff").hidden = true;
  $("diff-summary").textContent = "";

  const schedules = $("schedules");
  schedules.replaceChildren();
  for (const s of detail.schedules) {
    const last = s.lastRun ? `${s.lastRun.status} · ${ago(s.lastRun.at)}` : (s.lastStatus || "never");
    schedules.append(el("tr", {},
      el("td", { class: "mono", text: s.cron }), el("td", { text: s.timezone }),
      el("td", { text: s.enabled ? "enabled" : "paused" }),
      el("td", { text: s.nextRun ? new Date(s.nextRun).toLocaleString() : "–" }),
      el("td", { text: last })));
  }
  $("schedules-none").hidden = detail.schedules.length > 0;

  drawBlockRuns();
}

function drawBlockRuns() {
  const detail = state.block;
  const runs = $("block-runs");
  runs.replaceChildren();
  for (const run of detail.runs) {
    const row = el("tr", { dataset: { run: run.id }, title: "Open this run" },
      el("td", {}, el("span", { class: `dot s-${run.status}` }), ` ${run.status_label}`),
      el("td", { text: run.source }),
      el("td", { class: "mono", text: run.version != null ? `v${run.version}` : "unsaved code" }),
      el("td", { text: ago(run.created), title: new Date(run.created).toLocaleString() }),
      el("td", { text: run.user || "" }));
    row.addEventListener("click", () => openRun(run));
    runs.append(row);
  }
  $("block-runs-none").hidden = detail.runs.length > 0;
}

async function refreshBlockRuns() {
  const slug = state.block.block.slug;
  const { ok, data } = await getJSON(blockUrl(slug));
  if (!ok || !state.block || data.tenant !== state.tenant || state.block.block.slug !== slug) return;
  state.block.runs = data.runs;
  drawBlockRuns();
}

async function openVersion(number) {
  const { ok, data, status } = await getJSON(blockUrl(state.block.block.slug, `versions/${number}/`));
  if (!ok) return banner("That version could not be loaded.", { code: String(status) });
  setCode(data.code);
  saveDraft();
  banner(`Version ${number} is in the editor.`, { info: true });
}

function lineCount(n) {
  return n === 1 ? "1 line" : `${n.toLocaleString()} lines`;
}

async function showDiff() {
  const from = document.querySelector("input[name=diff-from]:checked");
  const to = document.querySelector("input[name=diff-to]:checked");
  if (!from || !to) return;
  const { ok, data, status } = await getJSON(blockUrl(state.block.block.slug, `diff/?from=${from.value}&to=${to.value}`));
  if (!ok) return banner("The diff could not be made.", { code: String(status) });
  const box = $("diff");
  box.replaceChildren();
  const classes = { "+": "add", "-": "del", "@": "hunk", "=": "file", " ": "ctx" };
  for (const line of data.lines) {
    const prefix = line.kind === "@" || line.kind === "=" ? "" : line.kind;
    box.append(el("span", { class: classes[line.kind] || "ctx", text: prefix + line.text }));
  }
  box.hidden = data.identical;
  $("diff-summary").textContent = data.identical
    ? `Versions ${data.from} and ${data.to} have the same code.`
    : `v${data.from} → v${data.to}: ${lineCount(data.added)} added, ${lineCount(data.removed)} removed${data.truncated ? " (the diff is cut short)" : ""}.`;
}

async function saveVersion() {
  const slug = state.block ? state.block.block.slug : $("new-slug").value.trim();
  if (!slug) return banner("Name the new block first (its slug: lowercase letters, digits and dashes).", { code: "INVALID_ARGUMENT" });
  $("save").disabled = true;
  const language = languageOf($("block-name").value);
  const result = await postJSON(blockUrl(slug, "save/"), { code: code(), message: $("save-message").value, language });
  updateButtons();
  if (!result.ok) return refusal(result, "The block could not be saved.");
  const { version, createdVersion, createdBlock } = result.data;
  $("save-state").textContent = createdVersion
    ? `Saved as version ${version.number}.`
    : `No change: the code is version ${version.number}'s; no new version was saved.`;
  if (createdVersion) $("save-message").value = "";
  if (createdBlock) { $("new-slug").value = ""; state.block = { block: result.data.block }; await loadBlocks(); }
  await openBlock(slug, { keepCode: true });
}

async function deployVersion(number) {
  const slug = state.block.block.slug;
  const before = state.block.block.deployedVersion;
  const result = await postJSON(blockUrl(slug, "deploy/"), { version: number });
  if (!result.ok) return refusal(result, "The version could not be deployed.");
  banner(before != null && number < before ? `Rolled back to version ${number}.` : `Deployed version ${number}.`, { info: true });
  await openBlock(slug, { keepCode: true });
  loadBlocks();
}

$("block").addEventListener("change", () => openBlock($("block").value));
$("save").addEventListener("click", saveVersion);
$("show-diff").addEventListener("click", showDiff);
$("new-slug").addEventListener("input", updateButtons);

// -- tenant and tabs ----------------------------------------------------------------------

$("tenant").addEventListener("change", () => {
  state.tenant = $("tenant").value;
  const url = new URL(location.href);
  url.searchParams.set("tenant", state.tenant);
  url.searchParams.delete("block");
  history.replaceState(null, "", url);
  state.history = [];
  // The output pane shows runs of the tenant chosen: another tenant's run leaves it.
  if (!running()) { resetOutput(null); setStatus("idle", "idle"); }
  drawHistory();
  refreshHistory();
  state.block = null;
  state.blocks = [];
  drawBlock();
  loadBlocks();
  markExamples();
  updateButtons();
});

function showTab(name) {
  for (const other of document.querySelectorAll(".tab")) {
    const on = other.dataset.tab === name;
    other.classList.toggle("on", on);
    other.setAttribute("aria-selected", String(on));
    $(`tab-${other.dataset.tab}`).hidden = !on;
  }
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));

document.addEventListener("visibilitychange", () => { consoleView.schedule(); callsView.schedule(); });

validateInput();
drawHistory();
updateButtons();
connect();
loadBlocks().then(() => { if (boot.block) openBlock(boot.block, { keepCode: Boolean(draft?.block === boot.block) }); });
