// The demo page (web/index.html) end to end in headless Chromium (its SwiftShader WebGPU),
// served by web/range-server.py (byte ranges, every request logged):
// 1. With the weights cache failing as a full quota does, the page says it is not caching and
//    still answers as native.
// 2. Each case of `cases.json` is loaded by URL, answered with `run=1`, and must give the
//    native ids; the page's answer must show the text. A screenshot of each goes to SHOTS_DIR.
//    With $NO_RANGE_ORIGIN (a server ignoring Range), the page must say so and still answer.
//    With $SEGMENT_CASE, a `segment` answer drawn by the page (with the mask decoder) must be
//    the PNG the CLI's `paligemma draw` wrote. A device lost (destroyed, as a driver reset
//    would) must be reported on the page, and a call after it must reject naming the loss.
//    Loading a second model on the page must free the first and answer as native.
// 3. The large case (`big` in cases.json, a sharded bf16 model of 300+ MB): JS heap (with
//    array buffers) and wasm memory are sampled through the load; their peak must stay under
//    1.5x the largest tensor + 64 MiB (HEAP_TRACE=1 prints each sample). A reload must read
//    every weight from the cache: the server's log shows no request for its safetensors.
//    "Remove cached model" must then empty the cache of it, and "Cancel loading" must stop a
//    load midway with a message.
// Usage: node web/test-chromium.mjs CASES.json SHOTS_DIR   (the caller serves the repository
// root at $PAGE_ORIGIN and logs requests to $SERVER_LOG)
import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";
import { answersAsNative, caseQuery, rel } from "./page-cases.mjs";

const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const shots = process.argv[3];
const origin = process.env.PAGE_ORIGIN ?? "http://127.0.0.1:8765";
const serverLog = process.env.SERVER_LOG;
const MiB = 2 ** 20;
fs.mkdirSync(shots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan"],
});
let failed = 0;
const check = (ok, what) => {
  if (!ok) failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  return ok;
};

/** Opens the page on case `c` and waits for its answer. `sampleMemory`: sample the JS heap
 * every 10 ms meanwhile. `before(page)`: runs before the page loads. */
async function run(c, { sampleMemory = false, before = async () => {}, extra = {}, at = origin } = {}) {
  const page = await browser.newPage();
  await page.setViewport({ width: 900, height: 900 });
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`page error: ${e.message}`));
  await before(page);
  const query = caseQuery(c, extra);
  const cdp = await page.createCDPSession();
  let peakHeap = 0;
  let sampling = sampleMemory;
  const sampler = (async () => {
    while (sampling) {
      const h = await cdp.send("Runtime.getHeapUsage").catch(() => null);
      if (h) peakHeap = Math.max(peakHeap, h.usedSize + (h.backingStorageSize ?? 0));
      if (h && process.env.HEAP_TRACE) console.log(`heap ${(h.usedSize / MiB).toFixed(1)} + buffers ${(h.backingStorageSize / MiB).toFixed(1)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  await page.goto(`${at}/web/index.html?${query}`);
  await page.waitForSelector("body[data-done]", { timeout: 600_000 });
  sampling = false;
  await sampler;
  const got = await page.evaluate(() => ({
    out: window.paligemmaResult,
    load: window.paligemmaLoad,
    wasmBytes: window.paligemmaWasmBytes?.() ?? 0,
    shown: document.querySelector("#answer").textContent,
    status: document.querySelector("#status").textContent,
    notes: document.querySelector("#notes").textContent,
    timings: document.querySelector("#timings").textContent,
  }));
  const shot = path.join(shots, `${c.name}-${c.precision ?? "default"}${extra.tag ?? ""}.png`);
  await page.screenshot({ path: shot });
  const { out, shown } = got;
  const ok = answersAsNative(c, out, shown);
  const answer = out.error
    ? `error ${out.error}`
    : `${JSON.stringify(out.generatedIds)} shown ${JSON.stringify(shown)}` +
      (ok ? "" : `, native ${JSON.stringify(c.native_ids)} ${JSON.stringify(c.native_text)}`);
  check(ok, `${c.name} (${c.precision ?? "default"}): ${answer}\n     ${got.status}\n     ${got.timings}; screenshot ${shot}`);
  if (!ok) console.log(logs.map((l) => `     ${l}`).join("\n"));
  return { page, ...got, peakHeap };
}

/** Requests the server logged from line `from` on for a safetensors file under `folder` (the
 * index, which names the shards, is fetched on every load). */
function weightRequests(from, folder) {
  const lines = fs.readFileSync(serverLog, "utf8").split("\n").slice(from);
  return lines.filter((l) => {
    const file = l.split(" ")[1]?.split("?")[0] ?? "";
    return file.startsWith(rel(folder) + "/") && file.endsWith(".safetensors");
  });
}
const logLines = () => fs.readFileSync(serverLog, "utf8").split("\n").length - 1;

/** The largest tensor of the safetensors files in `dir`, in bytes. */
function largestTensor(dir) {
  let largest = 0;
  for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors"))) {
    const fd = fs.openSync(path.join(dir, f), "r");
    const len = Buffer.alloc(8);
    fs.readSync(fd, len, 0, 8, 0);
    const header = Buffer.alloc(Number(len.readBigUInt64LE()));
    fs.readSync(fd, header, 0, header.length, 8);
    fs.closeSync(fd);
    for (const [k, t] of Object.entries(JSON.parse(header.toString()))) {
      if (k !== "__metadata__") largest = Math.max(largest, t.data_offsets[1] - t.data_offsets[0]);
    }
  }
  return largest;
}

try {
  // 1. A cache that refuses every write, as a full quota does (before anything is cached).
  const first = cases.find((c) => !c.big);
  const refused = await run(first, {
    extra: { tag: "-quota" },
    before: (page) =>
      page.evaluateOnNewDocument(() => {
        Cache.prototype.put = () => Promise.reject(new DOMException("the quota is full (test)", "QuotaExceededError"));
      }),
  });
  check(refused.notes.includes("not caching the weights: QuotaExceededError"), `a full quota is reported: "${refused.notes}"`);
  await refused.page.close();

  // A server that ignores Range: one whole-file request per shard, said on the page.
  if (process.env.NO_RANGE_ORIGIN) {
    const whole = await run(first, { at: process.env.NO_RANGE_ORIGIN, extra: { tag: "-noranges" } });
    check(whole.notes.includes("ignores Range"), `a server ignoring Range is reported: "${whole.notes}"`);
    await whole.page.close();
  }

  // A `segment` answer drawn on the page (with the mask decoder): the same PNG, byte for byte,
  // as the command line's `paligemma draw --seg-decoder` wrote.
  if (process.env.SEGMENT_CASE) {
    const seg = JSON.parse(fs.readFileSync(process.env.SEGMENT_CASE, "utf8"));
    const page = await browser.newPage();
    const query = new URLSearchParams({
      model: rel(first.model) + "/",
      image: rel(seg.image),
      segDecoder: rel(seg.decoder),
      answer: seg.answer,
      run: "1",
    });
    await page.goto(`${origin}/web/index.html?${query}`);
    await page.waitForSelector("body[data-done]", { timeout: 240_000 });
    const drawn = await page.evaluate(() => window.paligemmaDrawing ?? { error: window.paligemmaResult?.error });
    await page.screenshot({ path: path.join(shots, "segment.png") });
    const png = drawn.png ? Buffer.from(drawn.png, "base64") : Buffer.alloc(0);
    const cli = fs.readFileSync(seg.cli_png);
    const masks = (drawn.objects ?? []).map((o) => (o.mask ? "mask" : "no mask")).join(", ");
    check(
      png.equals(cli) && masks === "mask, no mask",
      `a segment answer drawn on the page equals the CLI's --draw (${png.length} and ${cli.length} bytes; ` +
        `objects: ${masks || drawn.error})`,
    );
    await page.close();
  }

  // A lost device is reported on the page, and a call after it rejects with the reason.
  {
    const page = await browser.newPage();
    const query = new URLSearchParams({ model: rel(first.model) + "/", image: rel(first.image), prompt: first.prompt });
    await page.goto(`${origin}/web/index.html?${query}`);
    await page.waitForFunction(() => window.paligemmaModel && !document.querySelector("#go").disabled, { timeout: 120_000 });
    await page.evaluate(() => window.paligemmaModel.loseDevice());
    await page.waitForFunction(() => document.querySelector("#status").textContent.includes("lost"), { timeout: 30_000 });
    const status = await page.$eval("#status", (e) => e.textContent);
    const rejected = await page.evaluate(async () => {
      const image = new Uint8Array(await (await fetch(new URLSearchParams(location.search).get("image"))).arrayBuffer());
      try {
        await window.paligemmaModel.generate(image, "caption en", 4, null);
        return "accepted";
      } catch (e) {
        return String(e.message ?? e);
      }
    });
    check(status.includes("lost") && rejected.includes("lost"), `a lost device: page "${status}", a call after it "${rejected}"`);
    await page.close();
  }

  // Loading a second model frees the first (wasm-bindgen's free(): its GPU buffers go with
  // it), and the second answers as native.
  const second = cases.find((c) => !c.big && c.model !== first.model && c.precision === first.precision);
  if (second) {
    const page = await browser.newPage();
    const query = new URLSearchParams({ model: rel(first.model) + "/", image: rel(first.image) });
    if (first.precision) query.set("precision", first.precision);
    await page.goto(`${origin}/web/index.html?${query}`);
    const ready = () => window.paligemmaModel && !document.querySelector("#load").disabled && document.querySelector("#status").textContent.includes(" on ");
    await page.waitForFunction(ready, { timeout: 120_000 });
    await page.evaluate(() => (window.firstModel = window.paligemmaModel));
    await page.$eval("#modelUrl", (e, url) => (e.value = url), rel(second.model) + "/");
    await page.click("#load");
    await page.waitForFunction((url) => window.paligemmaModel && document.querySelector("#status").textContent.startsWith(url + " on "), { timeout: 120_000 }, rel(second.model) + "/");
    const got = await page.evaluate(async (c) => {
      const image = new Uint8Array(await (await fetch(c.image)).arrayBuffer());
      const out = await window.paligemmaModel.generate(image, c.prompt, c.max_new_tokens, null, c.sampling);
      return { freed: window.firstModel.__wbg_ptr === 0, ids: out.generatedIds };
    }, { ...second, image: rel(second.image) });
    check(
      got.freed && JSON.stringify(got.ids) === JSON.stringify(second.native_ids),
      `a second model (${second.name}) frees the first (${got.freed}) and answers ${JSON.stringify(got.ids)}`,
    );
    await page.close();
  }

  // 2. Every case, the large one with the memory sampled.
  const big = [];
  for (const c of cases) {
    const r = await run(c, { sampleMemory: !!c.big });
    if (c.big) big.push([c, r]);
    else await r.page.close();
  }

  // 3. The large model: memory, then a reload from the cache, then removing it.
  for (const [c, r] of big) {
    const largest = largestTensor(c.model);
    const peak = r.peakHeap + r.wasmBytes;
    const bound = 1.5 * largest + 64 * MiB;
    check(
      peak < bound,
      `${c.name}: peak JS heap ${(r.peakHeap / MiB).toFixed(1)} MiB + wasm memory ${(r.wasmBytes / MiB).toFixed(1)} MiB = ` +
        `${(peak / MiB).toFixed(1)} MiB, under 1.5 x the largest tensor (${(largest / MiB).toFixed(1)} MiB) + 64 MiB = ` +
        `${(bound / MiB).toFixed(1)} MiB; loaded ${JSON.stringify(r.load)}`,
    );
    await r.page.close();
    // The reload only loads (its answer would repeat the first visit's, at SwiftShader's pace).
    const mark = logLines();
    const again = { page: await browser.newPage() };
    const loadOnly = new URLSearchParams({ model: rel(c.model) + "/", image: rel(c.image) });
    await again.page.goto(`${origin}/web/index.html?${loadOnly}`);
    await again.page.waitForFunction(() => window.paligemmaLoad && document.querySelector("#status").textContent.includes(" on "), { timeout: 300_000 });
    again.load = await again.page.evaluate(() => window.paligemmaLoad);
    const requests = weightRequests(mark, c.model);
    check(
      requests.length === 0 && again.load?.download === 0 && again.load?.cache > 0,
      `${c.name} reloaded from the cache: ${requests.length} weight requests in the server's log ` +
        `(${requests.slice(0, 3).join("; ")}), ${JSON.stringify(again.load)}`,
    );
    await again.page.click("#uncache");
    await again.page.waitForFunction(() => document.querySelector("#notes").textContent.includes("removed"));
    const left = await again.page.evaluate(async (prefix) => {
      const cache = await caches.open("paligemma-weights-v1");
      return (await cache.keys()).filter((r) => new URL(r.url).pathname.startsWith(prefix)).length;
    }, rel(c.model) + "/");
    const notes = await again.page.$eval("#notes", (e) => e.textContent);
    check(left === 0, `"Remove cached model": ${notes}; ${left} pieces left`);
    await again.page.close();

    // Cancelling mid-download: the load's promise rejects, the page says so and stays alive.
    const page = await browser.newPage();
    const query = new URLSearchParams({ model: rel(c.model) + "/", image: rel(c.image), run: "1" });
    await page.goto(`${origin}/web/index.html?${query}`);
    await page.waitForFunction(() => document.querySelector("#progress").value > 0.1, { timeout: 120_000 });
    await page.click("#cancel");
    await page.waitForSelector("body[data-done]", { timeout: 120_000 });
    const status = await page.$eval("#status", (e) => e.textContent);
    const alive = await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(true))));
    check(status.includes("cancelled") && alive, `cancelling the load: "${status}"`);
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(failed ? `${failed} checks failed` : `all ${cases.length} cases match native, and every check passed`);
process.exit(failed ? 1 : 0);
