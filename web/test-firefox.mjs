// The demo page in headless Firefox (Debian's firefox-esr, 153 at the time of writing), whose
// WebGPU is its own (built on wgpu) and off by default on Linux: the test turns it on with the
// `dom.webgpu.enabled` pref (and `gfx.webgpu.ignore-blocklist`, since the only Vulkan here is
// lavapipe, a CPU driver). The first case of each fixture model in `cases.json` (the others
// and the large model are left to Chromium and Node) must give the native ids and show the
// text.
// Usage: node web/test-firefox.mjs CASES.json   (the caller serves the repository root at
// $PAGE_ORIGIN)
import fs from "node:fs";
import puppeteer from "puppeteer-core";
import { answersAsNative, caseQuery } from "./page-cases.mjs";

// One case per model folder (the first: Chromium and Node run them all), not the large one.
const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).filter(
  (c, i, all) => !c.big && all.findIndex((d) => d.model === c.model) === i,
);
const origin = process.env.PAGE_ORIGIN ?? "http://127.0.0.1:8765";

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX ?? "/usr/bin/firefox-esr",
  headless: true,
  extraPrefsFirefox: { "dom.webgpu.enabled": true, "gfx.webgpu.ignore-blocklist": true },
});
let failed = 0;
try {
  for (const c of cases) {
    const page = await browser.newPage();
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
    await page.goto(`${origin}/web/index.html?${caseQuery(c)}`);
    await page.waitForSelector("body[data-done]", { timeout: 240_000 });
    const out = await page.evaluate(() => window.paligemmaResult);
    const shown = await page.$eval("#answer", (e) => e.textContent);
    const timings = await page.$eval("#timings", (e) => e.textContent);
    const ok = answersAsNative(c, out, shown);
    if (!ok) failed++;
    console.log(
      `${ok ? "ok  " : "FAIL"} ${c.name} (${c.precision ?? "default"}): ` +
        (out.error ? `error ${out.error}` : JSON.stringify(out.generatedIds)) +
        (ok ? "" : `, native ${JSON.stringify(c.native_ids)} ${JSON.stringify(c.native_text)}`) +
        `\n     ${timings}`,
    );
    if (!ok) console.log(logs.map((l) => `     ${l}`).join("\n"));
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(failed ? `${failed} of ${cases.length} cases differ from native` : `all ${cases.length} cases match native`);
process.exit(failed ? 1 : 0);
