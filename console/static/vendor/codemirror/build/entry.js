// The editor of the runner page: CodeMirror 6 with JavaScript highlighting, bundled
// into one ES module so the page needs nothing from the internet.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { EditorState, Prec } from "@codemirror/state";
import { indentWithTab } from "@codemirror/commands";
import { javascript } from "@codemirror/lang-javascript";

export { EditorView, EditorState, keymap, Prec, indentWithTab, basicSetup, javascript };
