// The editor of the runner page: CodeMirror 6 with JavaScript and TypeScript
// highlighting, bundled into one ES module so the page needs nothing from the internet.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { EditorState, Prec } from "@codemirror/state";
import { indentWithTab } from "@codemirror/commands";
import { javascript } from "@codemirror/lang-javascript";

export { EditorView, EditorState, keymap, Prec, indentWithTab, basicSetup, javascript };

// Errors and type diagnostics in the editor: the language switch (a compartment), the
// marks in the gutter and under the code (lint's diagnostics), and moving the cursor.
export { Compartment, EditorSelection } from "@codemirror/state";
export { setDiagnostics, lintGutter, forEachDiagnostic } from "@codemirror/lint";
