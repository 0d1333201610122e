// Loads a PaliGemma model folder by URL into the wasm `Model` (src/web/mod.rs): the page-side
// half of the JS API. Works wherever `fetch` does (browsers; Node for http URLs).
//
//   import init, { Model } from "./pkg/paligemma.js";
//   import { fetchModel } from "./paligemma.js";
//   await init();
//   const model = await fetchModel(Model, "/models/paligemma-3b-pt-224/", {
//     onProgress: (phase, done, total) => console.log(phase, done, total),
//   });
//   const out = await model.generate(imageBytes, "caption en", 32, (id, piece) => show(piece));
//
// Each safetensors file is read tensor by tensor: its header by one or two HTTP range requests,
// then each tensor's bytes by its own range request, streamed into wasm memory while the
// library uploads the one before. Neither JS nor wasm ever holds a whole file, so memory peaks
// near the largest tensor. Where the browser has Cache Storage, every piece read is also stored
// there (keyed by the file's URL, the byte range and the file's ETag or size), and a later load
// reads it back without a request. A server that ignores Range gets one whole-file request per
// shard, held in memory (the `onNote` callback says so).

const CACHE_NAME = "paligemma-weights-v1";
/** The first request of a file asks for this many bytes: most headers fit (3B's is ~100 KB). */
const HEADER_PROBE = 1 << 18;
/** safetensors' own bound on a header's length. */
const MAX_HEADER = 100_000_000;

/** Fetches `url` whole, reporting (bytes so far, bytes in all or 0 when the server does not
 * say) as it streams in. */
export async function download(url, onBytes = () => {}, init = {}) {
  return readWhole(url, await fetchOk(url, init), onBytes);
}

async function fetchOk(url, init) {
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

/** The body of `response` (from `url`) as one array, streamed in. */
async function readWhole(url, response, onBytes = () => {}) {
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

/** The weights cache, or null where the browser has none (Node; pages that are not a secure
 * context) or refuses to open it. */
export async function openWeightCache() {
  try {
    return globalThis.caches ? await globalThis.caches.open(CACHE_NAME) : null;
  } catch {
    return null;
  }
}

/** Removes what the cache holds of the model folder at `base` (every model when `base` is
 * omitted); resolves to the number of entries removed. */
export async function removeCachedModel(base) {
  const cache = await openWeightCache();
  if (!cache) return 0;
  const prefix = base ? folderUrl(base).href : "";
  let removed = 0;
  for (const request of await cache.keys()) {
    if (request.url.startsWith(prefix) && (await cache.delete(request))) removed++;
  }
  return removed;
}

function folderUrl(base) {
  return new URL(base.endsWith("/") ? base : base + "/", globalThis.location?.href);
}

/** The cache key of a piece of file `url` ("header", or a byte range and the file's version):
 * a query parameter, since cache matching ignores fragments. */
function cacheKey(url, piece) {
  return `${url}${url.includes("?") ? "&" : "?"}paligemma-piece=${encodeURIComponent(piece)}`;
}

/** The safetensors files of a model folder: the index's shards, or `model.safetensors`. */
async function shardNames(url, signal) {
  const index = await fetch(url("model.safetensors.index.json"), { signal });
  if (!index.ok) return ["model.safetensors"];
  const map = (await index.json()).weight_map ?? {};
  return [...new Set(Object.values(map))].sort();
}

/** Loads the model folder at `base` (config.json, tokenizer.json, safetensors, possibly
 * sharded).
 * - `precision`: "f32", "f16", "q8", "q4" or null for the default.
 * - `onProgress(phase, done, total)`: phase "download" or "cache" (where the latest tensor
 *   bytes came from; `done` counts bytes from both, `total` is the files' size), then
 *   "upload" (bytes of tensors on the GPU; the library reports it after each tensor).
 * - `onNote(text)`: what the page should tell the user (no cache, a server ignoring Range).
 * - `signal`: an AbortSignal that cancels the load (the promise rejects).
 * - `cache`: false to neither read nor write the weights cache.
 * Resolves to the wasm `Model`, with `loadStats`: bytes from the network and from the cache,
 * milliseconds spent waiting for bytes, and the load's whole time. */
export async function fetchModel(
  Model,
  base,
  { precision = null, onProgress = () => {}, onNote = () => {}, signal, cache = true } = {},
) {
  const t0 = performance.now();
  const root = folderUrl(base);
  const url = (file) => new URL(file, root).href;
  const ctx = {
    signal,
    cache: cache ? await openWeightCache() : null,
    stats: { download: 0, cache: 0, waitMs: 0, requests: 0 },
    total: 0,
    onNote,
    onBytes(source) {
      onProgress(source, ctx.stats.download + ctx.stats.cache, ctx.total);
    },
  };
  if (cache && !ctx.cache) onNote("this browser offers no Cache Storage here: weights are not cached");
  const config = new TextDecoder().decode(await download(url("config.json"), undefined, { signal }));
  const tokenizer = await download(url("tokenizer.json"), undefined, { signal });
  const names = await shardNames(url, signal);
  const shards = [];
  for (const name of names) shards.push(await openShard(url(name), ctx));
  ctx.total = shards.reduce((sum, s) => sum + (s.size ?? s.length), 0);
  const model = await Model.load(root.href, config, tokenizer, shards, names, precision, (done, total) =>
    onProgress("upload", done, total),
  );
  model.loadStats = { ...ctx.stats, loadMs: performance.now() - t0 };
  return model;
}

/** Opens safetensors file `url`: `{header, size, read}` for the library to read tensor by
 * tensor, or the whole file's bytes when the server ignores Range. */
async function openShard(url, ctx) {
  const headerKey = cacheKey(url, "header");
  const hit = ctx.cache && (await ctx.cache.match(headerKey));
  if (hit) {
    const header = new Uint8Array(await hit.arrayBuffer());
    ctx.stats.cache += header.length;
    return remoteShard(url, header, Number(hit.headers.get("x-size")), hit.headers.get("x-version"), ctx);
  }
  const probe = await ranged(url, 0, HEADER_PROBE, ctx, true);
  if (probe.status === 200) {
    ctx.onNote(`${url}: the server ignores Range requests; the whole file is downloaded and held in memory`);
    return readWhole(url, probe, (done) => {
      ctx.stats.download = done;
      ctx.onBytes("download");
    });
  }
  let head = new Uint8Array(await probe.arrayBuffer());
  if (head.length < 8) throw new Error(`${url}: shorter than a safetensors header`);
  const n = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
  if (n > MAX_HEADER) throw new Error(`${url}: header length ${n} is not a safetensors header's`);
  if (head.length < 8 + n) {
    const rest = new Uint8Array(await (await ranged(url, head.length, 8 + n, ctx)).arrayBuffer());
    head = concat(head, rest);
  }
  const header = head.slice(0, 8 + n);
  ctx.stats.download += header.length;
  let tensors;
  try {
    tensors = JSON.parse(new TextDecoder().decode(header.subarray(8)));
  } catch (e) {
    throw new Error(`${url}: header: ${e.message}`);
  }
  const ends = Object.entries(tensors).filter(([k]) => k !== "__metadata__").map(([, t]) => t.data_offsets?.[1] ?? 0);
  const size = 8 + n + Math.max(0, ...ends);
  // Content-Range's total, where the server exposes it, must be the size the header describes.
  const total = Number(probe.headers.get("content-range")?.split("/")[1]);
  if (total && total !== size) throw new Error(`${url}: the header describes ${size} bytes, the file holds ${total}`);
  const version = probe.headers.get("etag") ?? `size-${size}`;
  if (ctx.cache) {
    const headers = { "x-size": String(size), "x-version": version };
    await ctx.cache.put(headerKey, new Response(header, { headers })).catch((e) => dropCache(ctx, e));
  }
  return remoteShard(url, header, size, version, ctx);
}

function concat(a, b) {
  const c = new Uint8Array(a.length + b.length);
  c.set(a);
  c.set(b, a.length);
  return c;
}

/** GET bytes `start..end` of `url`; `whole` allows a 200 (a server ignoring Range). */
async function ranged(url, start, end, ctx, whole = false) {
  ctx.stats.requests++;
  const response = await fetch(url, { headers: { Range: `bytes=${start}-${end - 1}` }, signal: ctx.signal });
  if (response.status === 206 || (whole && response.status === 200)) return response;
  throw new Error(`${url}: bytes ${start}-${end - 1}: HTTP ${response.status}${response.ok ? " (not a range)" : ""}`);
}

function remoteShard(url, header, size, version, ctx) {
  return { header, size, read: (start, end) => readRange(url, start, end, version, ctx) };
}

/** A reader of bytes `start..end` of `url`: from the cache, or by a range request whose bytes
 * are stored in the cache as they pass. */
async function readRange(url, start, end, version, ctx) {
  const key = cacheKey(url, `${start}-${end}@${version}`);
  const hit = ctx.cache && (await ctx.cache.match(key));
  if (hit) return chunks(hit.body.getReader(), "cache", ctx, null);
  const response = await ranged(url, start, end, ctx);
  let store = null;
  if (ctx.cache) {
    // Backpressure: a chunk is handed to the cache only once it took the previous one, so the
    // cache's pace, not the network's, bounds what waits in memory.
    const pipe = new TransformStream();
    const cache = ctx.cache;
    store = {
      writer: pipe.writable.getWriter(),
      done: cache.put(key, new Response(pipe.readable)).then(() => null, (e) => e),
      failed: false,
    };
  }
  return chunks(response.body.getReader(), "download", ctx, store);
}

/** What the library calls `next()` on: each chunk of `reader`, counted, timed, and passed to
 * the cache; `null` at the end. */
function chunks(reader, source, ctx, store) {
  return {
    async next() {
      if (ctx.signal?.aborted) throw ctx.signal.reason ?? new Error("the load was cancelled");
      const t = performance.now();
      const { value, done } = await reader.read();
      ctx.stats.waitMs += performance.now() - t;
      if (done) {
        if (store) await finishStore(store, ctx);
        return null;
      }
      ctx.stats[source] += value.length;
      ctx.onBytes(source);
      if (store && !store.failed) {
        try {
          await store.writer.ready;
          store.writer.write(value).catch(() => {});
        } catch {
          store.failed = true;
        }
      }
      return value;
    },
  };
}

async function finishStore(store, ctx) {
  if (!store.failed) await store.writer.close().catch(() => {});
  const error = await store.done;
  if (error) dropCache(ctx, error);
}

/** Stops caching after a failed write (a full quota, most likely), telling the page once. */
function dropCache(ctx, error) {
  if (!ctx.cache) return;
  ctx.cache = null;
  ctx.onNote(`not caching the weights: ${error?.name ?? "error"}: ${error?.message ?? error}`);
}
