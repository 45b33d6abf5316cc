// The least a type check of a block needs to know of the platform: that `symposium` and
// `SymposiumError` exist. Every call on `symposium` is untyped here; the full
// declarations of the API (symposium.d.ts), where present, are checked against instead.

declare class SymposiumError extends Error {
  readonly code: string;
  readonly capability: string | null;
  readonly operation: string | null;
  readonly retryAfter: number | null;
}

declare const symposium: { readonly [name: string]: any };
