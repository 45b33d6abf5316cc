// What the runner's editor knows of the `symposium` API: completion after `symposium.`
// and `symposium.<capability>.`, and a tooltip over a call naming its signature and what
// it does. The declarations come from isolates/runtime/symposium.d.ts (the boot data's
// `api`), the same file authors download for their own editors.
//
// CodeMirror's autocompletion (in basicSetup) asks every language-data source; this adds
// one through EditorState.languageData, so that the vendored bundle needs nothing more.

const NAMESPACE_DOCS = {
  network: "HTTP requests and webhooks to allowed hosts",
  canvas: "2D drawing, exported as images",
  database: "SQL on the tenant's own database",
  process: "allowed commands, each in its own sandbox",
  kv: "key-value state of the tenant",
  email: "mail through the platform's relay",
  image: "image files: information and transforms",
  realtime: "messages on the tenant's channels",
  utils: "helpers that run in the block itself",
};

function infoNode(entry) {
  const node = document.createElement("div");
  node.className = "api-info";
  const signature = document.createElement("code");
  signature.className = "api-signature";
  signature.textContent = `symposium.${entry.name}${entry.signature}`;
  const doc = document.createElement("p");
  doc.textContent = entry.doc;
  node.append(signature, doc);
  return node;
}

// The method part of a signature, "(width: number, height: number)", for the list.
function parameterList(entry) {
  return `(${entry.params.map((p) => `${p.name}${p.optional ? "?" : ""}: ${p.type}`).join(", ")})`;
}

export function apiCompletionSource(declarations) {
  const methods = new Map(declarations.map((entry) => [entry.name, entry]));
  const namespaces = [...new Set(declarations.filter((e) => e.name.includes(".")).map((e) => e.name.split(".")[0]))];
  return (context) => {
    const match = context.matchBefore(/\bsymposium\.(?:[A-Za-z]\w*\.)?\w*$/);
    if (!match) return null;
    const path = match.text.slice("symposium.".length);
    const dot = path.lastIndexOf(".");
    const prefix = dot < 0 ? "" : path.slice(0, dot);
    const from = match.to - (path.length - dot - 1);
    const options = [];
    for (const entry of methods.values()) {
      const [head, tail] = entry.name.includes(".") ? entry.name.split(".") : ["", entry.name];
      if (head !== prefix) continue;
      options.push({ label: tail, type: "function", detail: parameterList(entry), info: () => infoNode(entry), apply: tail });
    }
    if (!prefix) {
      for (const name of namespaces) options.push({ label: name, type: "namespace", detail: NAMESPACE_DOCS[name] ?? "" });
    }
    if (!options.length) return null;
    return { from, options, validFor: /^\w*$/ };
  };
}

// The hover tooltip: a plain element placed under the pointer, showing the entry of the
// `symposium.x` or `symposium.ns.x` under it.
export function apiHover(EditorView, declarations) {
  const methods = new Map(declarations.map((entry) => [entry.name, entry]));
  const tip = document.createElement("div");
  tip.className = "api-hover";
  tip.setAttribute("role", "tooltip");
  tip.hidden = true;
  document.body.append(tip);
  let shown = null;
  let pending = null;

  function entryAt(view, pos) {
    const line = view.state.doc.lineAt(pos);
    const pattern = /\bsymposium\.([A-Za-z]\w*)(?:\.([A-Za-z]\w*))?/g;
    for (const match of line.text.matchAll(pattern)) {
      const start = line.from + match.index;
      const end = start + match[0].length;
      if (pos < start || pos > end) continue;
      const name = match[2] ? `${match[1]}.${match[2]}` : match[1];
      return methods.get(name) ?? null;
    }
    return null;
  }

  function hide() {
    tip.hidden = true;
    shown = null;
  }

  function show(view, event) {
    const pos = view.posAtCoords({ x: event.clientX, y: event.clientY });
    const entry = pos == null ? null : entryAt(view, pos);
    if (!entry) return hide();
    if (shown !== entry) {
      tip.replaceChildren(infoNode(entry));
      shown = entry;
    }
    tip.hidden = false;
    const room = window.innerWidth - tip.offsetWidth - 8;
    tip.style.left = `${Math.max(8, Math.min(event.clientX + 12, room))}px`;
    tip.style.top = `${event.clientY + 18}px`;
  }

  return EditorView.domEventHandlers({
    mousemove(event, view) {
      if (pending) cancelAnimationFrame(pending);
      pending = requestAnimationFrame(() => { pending = null; show(view, event); });
    },
    mouseleave() {
      if (pending) cancelAnimationFrame(pending);
      pending = null;
      hide();
    },
    keydown() { hide(); },
  });
}
