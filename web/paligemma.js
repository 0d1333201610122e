// Loads a PaliGemma model folder by URL into the wasm `Model` (src/web.rs) and runs it: the
// page-side half of the JS API. Works wherever `fetch` does (browsers; Node for http URLs).
//
//   import init, { Model } from "./pkg/paligemma.js";
//   import { fetchModel } from "./paligemma.js";
//   await init();
//   const model = await fetchModel(Model, "/models/paligemma-3b-pt-224/", {
//     onProgress: (phase, done, total) => console.log(phase, done, total),
//   });
//   const out = await model.generate(imageBytes, "caption en", 32, (id, piece) => show(piece));

/** Fetches `url` whole, reporting (bytes so far, bytes in all or 0 when the server does not
 * say) as it streams in. The bytes stay a JS array: wasm copies one tensor at a time. */
export async function download(url, onBytes = () => {}) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get("content-length")) || 0;
  if (!response.body || !total) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    onBytes(bytes.length, bytes.length);
    return bytes;
  }
  const bytes = new Uint8Array(total);
  const reader = response.body.getReader();
  let done = 0;
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) break;
    if (done + value.length > total) throw new Error(`${url}: more bytes than its Content-Length`);
    bytes.set(value, done);
    done += value.length;
    onBytes(done, total);
  }
  if (done !== total) throw new Error(`${url}: ${done} of ${total} bytes arrived`);
  return bytes;
}

/** The safetensors files of a model folder: the index's shards, or `model.safetensors`. */
async function shardNames(url) {
  const index = await fetch(url("model.safetensors.index.json"));
  if (!index.ok) return ["model.safetensors"];
  const map = (await index.json()).weight_map ?? {};
  return [...new Set(Object.values(map))].sort();
}

/** Loads the model folder at `base` (config.json, tokenizer.json, safetensors, possibly
 * sharded). `onProgress(phase, done, total)`: phase "download" (bytes of the shards fetched)
 * then "upload" (bytes of tensors sent to the GPU). `precision`: "f32", "f16", "q8", "q4" or
 * null for the default. */
export async function fetchModel(Model, base, { precision = null, onProgress = () => {} } = {}) {
  const root = new URL(base.endsWith("/") ? base : base + "/", globalThis.location?.href);
  const url = (file) => new URL(file, root).href;
  const config = new TextDecoder().decode(await download(url("config.json")));
  const tokenizer = await download(url("tokenizer.json"));
  const names = await shardNames(url);
  const sizes = new Array(names.length).fill(0);
  const got = new Array(names.length).fill(0);
  const shards = [];
  for (const [i, name] of names.entries()) {
    shards.push(
      await download(url(name), (done, total) => {
        [got[i], sizes[i]] = [done, total];
        const sum = (a) => a.reduce((x, y) => x + y, 0);
        onProgress("download", sum(got), Math.max(sum(sizes), sum(got)));
      }),
    );
  }
  return Model.load(root.href, config, tokenizer, shards, names, precision, (done, total) =>
    onProgress("upload", done, total),
  );
}
