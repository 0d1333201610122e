#!/usr/bin/env bash
# The browser build tested end to end (issue #13): builds the wasm package
# (scripts/wasm-build.sh), answers each case below with the native CLI, then with the wasm in
# Node on Dawn (npm `webgpu`, lavapipe) and in the demo page in headless Chromium (its
# SwiftShader); both must give the native ids and text. Screenshots of the page go to
# target/web-tests/shots/. Needs Debian's rustc-web, node/npm and chromium (installed when
# missing). `SKIP_CHROMIUM=1` runs Node only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/web-tests
mkdir -p "$out"

bash scripts/wasm-build.sh

# name | precision ("" = the default, 16-bit) | prompt: each fixture's own prompt.
cases=(
  "mqa|f32" "gqa|f32"
  "mqa|" "gqa|" "bf16|"
)
cargo build --quiet --bin paligemma
python3 - "$out/cases.json" "${cases[@]}" <<'PY'
import json, subprocess, sys
out, specs = sys.argv[1], sys.argv[2:]
cases = []
for spec in specs:
    name, precision = spec.split("|")
    d = f"tests/fixtures/{name}"
    prompt = json.load(open(f"{d}/expected.json"))["prompt"]
    cmd = ["target/debug/paligemma", "--model", f"{d}/model", "--image", f"{d}/image.png",
           "--prompt", prompt, "--max-new-tokens", "12", "--json"]
    if precision:
        cmd += ["--precision", precision]
    native = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                        .stdout.strip().splitlines()[-1])
    cases.append({"name": name, "precision": precision or None, "model": f"{d}/model",
                  "image": f"{d}/image.png", "prompt": prompt, "max_new_tokens": 12,
                  "native_ids": native["generated_ids"], "native_text": native["text"]})
json.dump(cases, open(out, "w"), indent=1)
PY

(cd web && npm install --silent --no-audit --no-fund)
if ! command -v chromium >/dev/null; then
  apt-get install -y -qq chromium >/dev/null
fi
# Dawn refuses Debian 12's lavapipe (Mesa 22.3 lacks shaderUniform*ArrayDynamicIndexing), so
# Node's Dawn runs on the Vulkan SwiftShader that Chromium's package ships.
echo "== Node + Dawn"
VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node web/test-node.mjs "$out/cases.json"

if [ -z "${SKIP_CHROMIUM:-}" ]; then
  python3 -m http.server --bind 127.0.0.1 8765 >/dev/null 2>&1 &
  server=$!
  trap 'kill $server' EXIT
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8765/ && break; sleep 0.1; done
  echo "== Chromium (headless)"
  node web/test-chromium.mjs "$out/cases.json" "$out/shots"
fi
