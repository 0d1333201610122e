#!/usr/bin/env bash
# The driver matrix, kept lean: `paligemma selftest` (the kernel case table, the tiny model) and
# the f32 fixtures against transformers on three independent implementations, and once more on lavapipe under Khronos' validation layer,
# failing on any message. Needs the test binaries and the CLI built (`cargo test --no-run`), lavapipe,
# Chromium's SwiftShader ICD (`chromium-common`), Mesa's GL (llvmpipe) and
# `vulkan-validationlayers`. Each run names the adapter it ran on, so a wrong ICD cannot pass.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
log=target/driver-matrix
mkdir -p "$log"

# run NAME ADAPTER-SUBSTRING [ENV...]: `paligemma selftest` (the kernel table, the tiny model,
# the adapter's limits and speed, as a user would run it) and the f32 fixtures, on that adapter.
run() {
  local name=$1 want=$2
  shift 2
  local t0=$SECONDS
  env "$@" target/debug/paligemma selftest >"$log/$name.log" 2>&1 ||
    { tail -40 "$log/$name.log"; echo "FAILED: selftest on $name"; exit 1; }
  grep -E "^(adapter|limits|features|selftest):" "$log/$name.log"
  env "$@" cargo test -q --test model -- --nocapture f32_matches_transformers_on_every_fixture \
    >>"$log/$name.log" 2>&1 ||
    { tail -40 "$log/$name.log"; echo "FAILED: fixtures on $name"; exit 1; }
  local adapters
  adapters=$( (sed -n 's/^test adapter: //p; s/^adapter: \(.*\), driver .*/\1/p' "$log/$name.log") | sort -u)
  if [ "$(echo "$adapters" | grep -c .)" != 1 ] || ! echo "$adapters" | grep -q "$want"; then
    echo "FAILED: $name ran on [$adapters], not on $want"
    exit 1
  fi
  echo "$name: selftest and f32 fixtures pass on $adapters ($((SECONDS - t0)) s)"
}

run swiftshader "SwiftShader" VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
run gl "(Gl)" WGPU_BACKEND=gl
# WGPU_DEBUG=0: no shader debug info, whose OpSource language (WGSL) Debian 12's layer predates.
# VK_LOADER_DEBUG=layer: the loader says it inserted the layer, checked below.
run validation "llvmpipe" WGPU_BACKEND=vulkan WGPU_VALIDATION=1 WGPU_DEBUG=0 VK_LOADER_DEBUG=layer
# The tests print the layer's messages as `VULKAN VALIDATION:`; the CLI logs them as wgpu's
# warnings or errors.
messages="VULKAN VALIDATION|(WARN|ERROR) +wgpu_hal::vulkan"
if grep -qE "$messages" "$log/validation.log"; then
  grep -E -A3 "$messages" "$log/validation.log" | head -40
  echo "FAILED: the validation layer reported the messages above"
  exit 1
fi
grep -q 'Inserted device layer "VK_LAYER_KHRONOS_validation"' "$log/validation.log" ||
  { echo "FAILED: the Khronos validation layer was not loaded"; exit 1; }
echo "validation: no message from VK_LAYER_KHRONOS_validation"
