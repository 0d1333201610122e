// The wasm build end to end in Node on Dawn (npm `webgpu`, on lavapipe here): every case of
// `cases.json` (made by scripts/web-tests.sh from the native CLI), its shards read range by
// range as a page reads them and the device asked for WebGPU's default limits, must generate
// the native ids.
// Usage: node web/test-node.mjs CASES.json
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { create, globals } from "webgpu";

// What wgpu's web backend looks for: WebGPU's classes, a `Window` (how it recognises a web
// context) and `navigator.gpu`.
Object.assign(globalThis, globals);
globalThis.Window ??= class Window {};
globalThis.navigator = { gpu: create([]) };

const require = createRequire(import.meta.url);
const { Model } = require("./pkg-node/paligemma.js");

// WebGPU's default limits, which every browser grants and the test requests explicitly.
const DEFAULT_LIMITS = {
  maxBufferSize: 256 * 2 ** 20,
  maxStorageBufferBindingSize: 128 * 2 ** 20,
  maxComputeWorkgroupStorageSize: 16384,
  maxStorageBuffersPerShaderStage: 8,
};

/** File `file` as the library's remote shard (src/web/remote.rs): its header, and a reader of
 * byte ranges that hands them over in 64 KiB chunks, as a streamed HTTP body would. `cut`
 * bytes go missing from the end of every range (a broken server). */
function remoteShard(file, cut = 0) {
  const fd = fs.openSync(file, "r");
  const size = fs.fstatSync(fd).size;
  const readAt = (start, end) => {
    const b = Buffer.alloc(end - start);
    fs.readSync(fd, b, 0, b.length, start);
    return new Uint8Array(b.buffer, b.byteOffset, b.length);
  };
  const n = Number(readAt(0, 8).reduce((v, x, i) => v + BigInt(x) * 256n ** BigInt(i), 0n));
  return {
    header: readAt(0, 8 + n),
    size,
    read: async (start, end) => {
      let at = start;
      end -= cut;
      return { next: async () => (at < end ? readAt(at, (at = Math.min(end, at + 65536))) : null) };
    },
  };
}

// The large model is Chromium's (its memory, cache and reload); here it would only add a minute.
const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).filter((c) => !c.big);
let failed = 0;
for (const c of cases) {
  const dir = c.model;
  const read = (f) => new Uint8Array(fs.readFileSync(path.join(dir, f)));
  const shards = fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();
  let uploaded = 0;
  const t0 = performance.now();
  const model = await Model.load(
    dir,
    fs.readFileSync(path.join(dir, "config.json"), "utf8"),
    read("tokenizer.json"),
    shards.map((f) => remoteShard(path.join(dir, f))),
    shards,
    c.precision,
    (done) => (uploaded = done),
    { defaultLimits: true },
  );
  const limits = model.limits();
  if (Object.entries(DEFAULT_LIMITS).some(([k, v]) => limits[k] !== v)) {
    console.log(`FAIL the device's limits ${JSON.stringify(limits)} are not the defaults asked for`);
    failed++;
  }
  const loadMs = performance.now() - t0;
  const streamed = [];
  const image = new Uint8Array(fs.readFileSync(c.image));
  const onToken = (id) => {
    streamed.push(id);
    return true;
  };
  const out = await model.generate(image, c.prompt, c.max_new_tokens, onToken, c.sampling);
  const ok =
    JSON.stringify(out.generatedIds) === JSON.stringify(c.native_ids) &&
    JSON.stringify(streamed) === JSON.stringify(out.generatedIds) &&
    out.text === c.native_text;
  if (!ok) failed++;
  console.log(
    `${ok ? "ok  " : "FAIL"} ${c.name} (${c.precision ?? "default"}) on ${model.adapter()}: ` +
      `${out.generatedIds.length} tokens ${JSON.stringify(out.generatedIds)}` +
      (ok ? "" : `, native ${JSON.stringify(c.native_ids)} ${JSON.stringify(c.native_text)} got ${JSON.stringify(out.text)}`) +
      `; load ${loadMs.toFixed(0)} ms (${uploaded} bytes), first token ${out.timings.time_to_first_token_ms.toFixed(0)} ms` +
      (out.detections.length ? `; ${out.detections.length} boxes` : ""),
  );
  model.free();
}
console.log(failed ? `${failed} of ${cases.length} cases differ from native` : `all ${cases.length} cases match native`);

// Bad input is a rejected promise whose message names the culprit, and the model still answers.
const c = cases[0];
const read = (f) => new Uint8Array(fs.readFileSync(path.join(c.model, f)));
const config = fs.readFileSync(path.join(c.model, "config.json"), "utf8");
const shard = read("model.safetensors");
const load = (shards) => Model.load(c.model, config, read("tokenizer.json"), shards, ["model.safetensors"], "f32", null);
const refusals = [
  ["a truncated shard", () => load([shard.subarray(0, shard.length - 10)]), "model.safetensors"],
  ["a config that is not JSON", () => Model.load(c.model, "{", read("tokenizer.json"), [shard], ["model.safetensors"], null, null), "config.json"],
  ["an unknown precision", () => Model.load(c.model, config, read("tokenizer.json"), [shard], ["model.safetensors"], "q3", null), "precision"],
  ["a remote shard whose ranges arrive short", () => load([remoteShard(path.join(c.model, "model.safetensors"), 1)]), "model.safetensors"],
  ["a remote shard without a reader", () => load([{ header: shard.subarray(0, 8), size: shard.length }]), "read"],
];
const model = await load([shard]);
const image = new Uint8Array(fs.readFileSync(c.image));
refusals.push(
  ["bytes that are no image", () => model.generate(new Uint8Array([1, 2, 3]), c.prompt, 4, null), "image"],
  ["top-p 0", () => model.generate(image, c.prompt, 4, null, { topP: 0 }), "topP"],
  ["a negative temperature", () => model.generate(image, c.prompt, 4, null, { temperature: -1 }), "temperature"],
);
let refused = 0;
for (const [what, call, names] of refusals) {
  let message = null;
  try {
    await call();
  } catch (e) {
    message = String(e.message ?? e);
  }
  const ok = message !== null && message.includes(names);
  refused += ok;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}: ${message ?? "accepted"}`);
}
const after = await model.generate(image, c.prompt, c.max_new_tokens, null, c.sampling);
const stillOk = JSON.stringify(after.generatedIds) === JSON.stringify(c.native_ids);
console.log(`${stillOk ? "ok  " : "FAIL"} the model answers after the refusals`);
if (refused !== refusals.length || !stillOk) failed++;
process.exit(failed ? 1 : 0);
