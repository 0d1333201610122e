#!/usr/bin/env bash
# The browser build tested end to end (issue #13, #23): builds the wasm package
# (scripts/wasm-build.sh), answers each case below with the native CLI, then with the wasm in
# Node on Dawn (npm `webgpu`, on Mesa 25's lavapipe, WebGPU's default limits), in the demo page
# in headless Chromium (its SwiftShader) and in headless Firefox (firefox-esr's own WebGPU, on
# lavapipe), served by web/range-server.py; each must give the native ids and text. In
# Chromium the page also streams a 318 MB sharded model within its memory bound, reloads it
# from its cache and draws a segment answer as the CLI does (web/test-chromium.mjs says what it
# checks). Screenshots of the page go to target/web-tests/shots/. Needs Debian's rustc-web,
# node/npm, chromium and firefox-esr (installed when missing). `SKIP_CHROMIUM=1` and
# `SKIP_FIREFOX=1` leave those browsers out. docs/BROWSER.md describes each step.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/web-tests
mkdir -p "$out"

WASM_PROFILE="${WASM_PROFILE:-wasm-test}" bash scripts/wasm-build.sh

# fixture | precision ("" = the default: 16-bit, or what a quantized checkpoint holds) | the
# model folder when not the fixture's own | sampling "temperature,top_p,seed" (greedy when
# empty). Each is asked its fixture's prompt about image.png (Gemma 3: its conversation's text,
# laid out by the chat template, which the page has built in).
# The CLI as the tests build it (with the dev-dependencies' features, so after `cargo test` this
# builds nothing; `cargo build --bin` would rebuild wgpu and naga with other features).
cargo test --quiet --no-run --test cli
target/debug/paligemma quantize --model tests/fixtures/gqa/model --precision q4 \
  --out "$out/gqa-q4" --force >/dev/null
# The large case: a sharded bf16 model of 318 MB (scripts/make-web-model.py), asked the bf16
# fixture's question; the page streams it, caches it and reloads it from the cache.
[ -f "$out/big/model.safetensors.index.json" ] || python3 scripts/make-web-model.py "$out/big"
cases=(
  "mqa|f32" "gqa|f32"
  "mqa|" "gqa|" "bf16|"
  "mqa|q8" "gqa||$out/gqa-q4" "gqa|f32||1.0,0.9,42"
  "gemma3|f32" "gemma3|"
  "bf16||$out/big"
)
python3 - "$out/cases.json" "${cases[@]}" <<'PY'
import json, subprocess, sys
out, specs = sys.argv[1], sys.argv[2:]
cases = []
for spec in specs:
    name, precision, model, sampling = (spec.split("|") + ["", ""])[:4]
    d = f"tests/fixtures/{name}"
    model = model or f"{d}/model"
    e = json.load(open(f"{d}/expected.json"))
    # PaliGemma's fixtures hold a prompt; Gemma 3's a conversation: its last turn's text.
    prompt = e.get("prompt") or next(
        p["text"] for p in e["messages"][-1]["content"] if p["type"] == "text")
    big = model.endswith("/big")
    new = 2 if big else 12  # the large model decodes at ~0.2 tokens/s on SwiftShader
    cmd = ["target/debug/paligemma", "--model", model, "--image", f"{d}/image.png",
           "--prompt", prompt, "--max-new-tokens", str(new), "--json"]
    if precision:
        cmd += ["--precision", precision]
    if sampling:
        t, p, seed = sampling.split(",")
        cmd += ["--temperature", t, "--top-p", p, "--seed", seed]
        sampling = {"temperature": float(t), "topP": float(p), "seed": int(seed)}
    native = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                        .stdout.strip().splitlines()[-1])
    if model != f"{d}/model":
        name = model.rstrip("/").split("/")[-1]
    if sampling:
        name += "-sampled"
    cases.append({"name": name, "precision": precision or None, "model": model,
                  "image": f"{d}/image.png", "prompt": prompt, "max_new_tokens": new, "big": big,
                  "sampling": sampling or None,
                  "native_ids": native["generated_ids"], "native_text": native["text"]})
json.dump(cases, open(out, "w"), indent=1)
PY

# A `segment` answer drawn by the CLI (`paligemma draw`, with the test mask decoder): the page
# must draw the same pixels. Two objects, one with mask codes.
seg_answer="<loc0100><loc0150><loc0900><loc0850>"
for i in $(seq 0 15); do seg_answer+=$(printf '<seg%03d>' $(((i * 37 + 5) % 128))); done
seg_answer+=" cat ; <loc0400><loc0050><loc0700><loc0500> dog"
target/debug/paligemma draw --image tests/fixtures/bf16/photo.jpg --answer "$seg_answer" \
  --seg-decoder tests/fixtures/seg/vae.npz --out "$out/segment-cli.png" >/dev/null
python3 -c 'import json, sys; json.dump(dict(zip(["answer", "image", "decoder", "cli_png"], sys.argv[1:])), sys.stdout)' \
  "$seg_answer" tests/fixtures/bf16/photo.jpg tests/fixtures/seg/vae.npz "$out/segment-cli.png" \
  >"$out/segment.json"

(cd web && npm install --silent --no-audit --no-fund)
if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Dawn refuses Debian 12's lavapipe (Mesa 22.3 lacks shaderUniform*ArrayDynamicIndexing).
# Mesa 25's, from bookworm-backports, is unpacked under target/ for Node alone (the system's
# driver, which the native tests use, is untouched).
mesa="$PWD/$out/mesa"
if [ ! -f "$mesa/lvp.json" ]; then
  mkdir -p "$mesa/lists/partial"
  echo "deb http://deb.debian.org/debian bookworm-backports main" >"$mesa/sources.list"
  apt_opts=(-qq -o Dir::Etc::SourceList="$mesa/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$mesa/lists")
  apt-get "${apt_opts[@]}" update
  (cd "$mesa" && apt-get "${apt_opts[@]}" download mesa-vulkan-drivers/bookworm-backports 2>/dev/null)
  dpkg -x "$mesa"/mesa-vulkan-drivers_*.deb "$mesa/root"
  lib="$mesa/root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so"
  sed "s|\"library_path\": \"[^\"]*\"|\"library_path\": \"$lib\"|" \
    "$mesa/root/usr/share/vulkan/icd.d/lvp_icd.json" >"$mesa/lvp.json"
fi
echo "== Node + Dawn"
VK_ICD_FILENAMES="$mesa/lvp.json" node web/test-node.mjs "$out/cases.json"

# The pages' server (byte ranges, a request log), and the same files from one that ignores Range.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
whole=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
: >"$out/server.log"
python3 web/range-server.py "$port" . "$out/server.log" &
server=$!
python3 web/range-server.py "$whole" . "$out/server-no-ranges.log" --no-ranges &
server_whole=$!
trap 'kill $server $server_whole 2>/dev/null || true' EXIT
for p in "$port" "$whole"; do
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
done

if [ -z "${SKIP_CHROMIUM:-}" ]; then
  echo "== Chromium (headless)"
  PAGE_ORIGIN="http://127.0.0.1:$port" NO_RANGE_ORIGIN="http://127.0.0.1:$whole" \
    SERVER_LOG="$out/server.log" SEGMENT_CASE="$out/segment.json" node web/test-chromium.mjs "$out/cases.json" "$out/shots"
fi

if [ -z "${SKIP_FIREFOX:-}" ]; then
  if ! command -v firefox-esr >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq firefox-esr >/dev/null
  fi
  echo "== Firefox (headless, $(firefox-esr --version 2>/dev/null))"
  PAGE_ORIGIN="http://127.0.0.1:$port" node web/test-firefox.mjs "$out/cases.json"
fi
