// The demo page (web/index.html) end to end in headless Chromium (its SwiftShader WebGPU):
// each case of `cases.json` is loaded by URL, answered with `run=1`, and must give the native
// ids; the page's answer must show the text. A screenshot of each run goes to SHOTS_DIR.
// Usage: node web/test-chromium.mjs CASES.json SHOTS_DIR   (the page is served by the caller
// at $PAGE_ORIGIN, the repository root)
import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";

const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const shots = process.argv[3];
const origin = process.env.PAGE_ORIGIN ?? "http://127.0.0.1:8765";
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
fs.mkdirSync(shots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan"],
});
let failed = 0;
try {
  for (const c of cases) {
    const page = await browser.newPage();
    await page.setViewport({ width: 900, height: 900 });
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => logs.push(`page error: ${e.message}`));
    const rel = (p) => "/" + path.relative(root, p);
    const query = new URLSearchParams({
      model: rel(c.model) + "/",
      image: rel(c.image),
      prompt: c.prompt,
      max: String(c.max_new_tokens),
      run: "1",
    });
    if (c.precision) query.set("precision", c.precision);
    for (const [k, v] of Object.entries(c.sampling ?? {})) query.set(k, String(v));
    await page.goto(`${origin}/web/index.html?${query}`);
    await page.waitForSelector("body[data-done]", { timeout: 240_000 });
    const out = await page.evaluate(() => window.paligemmaResult);
    const shown = await page.$eval("#answer", (e) => e.textContent);
    const status = await page.$eval("#status", (e) => e.textContent);
    const shot = path.join(shots, `${c.name}-${c.precision ?? "default"}.png`);
    await page.screenshot({ path: shot });
    const ok =
      !out.error &&
      JSON.stringify(out.generatedIds) === JSON.stringify(c.native_ids) &&
      JSON.stringify(out.streamed) === JSON.stringify(out.generatedIds) &&
      out.text === c.native_text &&
      shown === c.native_text;
    if (!ok) failed++;
    console.log(
      `${ok ? "ok  " : "FAIL"} ${c.name} (${c.precision ?? "default"}): ` +
        (out.error
          ? `error ${out.error}`
          : `${JSON.stringify(out.generatedIds)} shown ${JSON.stringify(shown)}` +
            (ok ? "" : `, native ${JSON.stringify(c.native_ids)} ${JSON.stringify(c.native_text)}`)) +
        `\n     ${status}; screenshot ${shot}`,
    );
    if (!ok) console.log(logs.map((l) => `     ${l}`).join("\n"));
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(failed ? `${failed} of ${cases.length} cases differ from native` : `all ${cases.length} cases match native`);
process.exit(failed ? 1 : 0);
