// What the page tests (web/test-chromium.mjs, web/test-firefox.mjs) share: the demo page's
// query for a case of `cases.json`, and whether its answer is the native CLI's.
import path from "node:path";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");

/** `p` as a path on the test server, which serves the repository root. */
export const rel = (p) => "/" + path.relative(root, path.resolve(p));

/** The page's query that answers case `c` as soon as loaded, with `extra` parameters. */
export function caseQuery(c, extra = {}) {
  const query = new URLSearchParams({
    model: rel(c.model) + "/",
    image: rel(c.image),
    prompt: c.prompt,
    max: String(c.max_new_tokens),
    run: "1",
    ...extra,
  });
  if (c.precision) query.set("precision", c.precision);
  for (const [k, v] of Object.entries(c.sampling ?? {})) query.set(k, String(v));
  return query;
}

/** Whether the page's result `out` (and the answer it shows) is case `c`'s native answer, the
 * streamed ids included. */
export function answersAsNative(c, out, shown) {
  return (
    !out.error &&
    JSON.stringify(out.generatedIds) === JSON.stringify(c.native_ids) &&
    JSON.stringify(out.streamed) === JSON.stringify(out.generatedIds) &&
    out.text === c.native_text &&
    shown === c.native_text
  );
}
