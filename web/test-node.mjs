// The wasm build end to end in Node on Dawn (npm `webgpu`, on lavapipe here): every case of
// `cases.json` (made by scripts/web-tests.sh from the native CLI) must generate the native ids.
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

const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
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
    shards.map(read),
    shards,
    c.precision,
    (done) => (uploaded = done),
  );
  const loadMs = performance.now() - t0;
  const streamed = [];
  const image = new Uint8Array(fs.readFileSync(c.image));
  const out = await model.generate(image, c.prompt, c.max_new_tokens, (id) => {
    streamed.push(id);
    return true;
  });
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
process.exit(failed ? 1 : 0);
