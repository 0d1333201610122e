#!/usr/bin/env bash
# The test suite and the bench on a machine that has a GPU but no Rust toolchain (the device
# machine): build and pack here, carry, unpack and run there.
#
#   here:    bash scripts/gpu-tests.sh pack     # -> .device/bundle.tar.xz (git-ignored)
#   there:   bash scripts/gpu-tests.sh run      # from the repository root; logs to $OUT if set
#
# With the device tool: carry [".device", ".gl"] (the Vulkan loader .debs in .gl, see the
# device README). The bundle also holds tests/data (Gemma's tokenizer, from
# fetch-gemma-tokenizer.sh), compressed: the tool carries at most 64 MiB with the working tree.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "${1:-}" in
pack)
    mkdir -p .device
    rm -rf .device/bin && mkdir -p .device/bin
    cargo build --release --bin paligemma --example bench
    # Test executables, as cargo reports them.
    cargo test --release --all-targets --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["kind"][0] + "-" + m["target"]["name"], m["executable"])
' | while read -r name exe; do cp "$exe" ".device/bin/test-$name"; done
    cp target/release/paligemma target/release/examples/bench .device/bin/
    # The Bevy example (its own crate; see examples/bevy/Cargo.toml for the Rust version),
    # optimised for size: 13 MB in the bundle against 23 unoptimised, which would not fit the
    # carry limit (13 minutes from clean on 2 cores).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_STRIP=true \
        cargo build --release --manifest-path examples/bevy/Cargo.toml --ignore-rust-version
    cp examples/bevy/target/release/paligemma-bevy .device/bin/
    strip .device/bin/* 2>/dev/null || true
    [ -f tests/data/gemma-tokenizer/tokenizer.json ] || bash scripts/fetch-gemma-tokenizer.sh
    cp -r tests/data .device/data
    tar -C .device -I 'xz -9 -T0' -cf .device/bundle.tar.xz bin data
    rm -rf .device/bin .device/data
    # What travels: the tracked files, this bundle and .gl, 64 MiB at most together.
    tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
    bundle=$(stat -c %s .device/bundle.tar.xz)
    echo "bundle $((bundle >> 20)) MiB + tracked files $((tracked >> 20)) MiB (+ .gl) of the 64 MiB carried"
    if [ $(((bundle + tracked) >> 20)) -gt 60 ]; then
        echo "too large to carry with .gl: trim the bundle" >&2
        exit 1
    fi
    ;;
run)
    if ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ]; then export VK_DRIVER_FILES="$nvidia_icd"; fi
    out="${OUT:-/tmp/gpu-tests}"
    mkdir -p "$out" /tmp/gpu-bundle
    tar -C /tmp/gpu-bundle -xJf .device/bundle.tar.xz
    # The tokenizer tests read tests/data (packed with the binaries).
    mkdir -p tests/data && cp -rn /tmp/gpu-bundle/data/. tests/data/
    export PALIGEMMA_BIN=/tmp/gpu-bundle/bin/paligemma
    status=0
    for t in /tmp/gpu-bundle/bin/test-*; do
        name="$(basename "$t")"
        echo "== $name"
        # The exit status is the test binary's own (a pipeline's `|| true` would hide it).
        if "$t" >"$out/$name.log" 2>&1; then rc=0; else rc=$?; status=1; fi
        grep -E "^test result|FAILED|panicked|adapter" "$out/$name.log" || true
        [ "$rc" -eq 0 ] || echo "!! $name exited $rc"
    done
    # Bevy and the model on one real device: headless captures, answers checked against the
    # CPU path, the view written to $out/bevy-view.png.
    echo "== bevy example"
    /tmp/gpu-bundle/bin/paligemma-bevy tests/fixtures/bf16/model --headless --check --captures 3 \
        --every 4 --prompt "caption en" --prompt "detect cat" --screenshot "$out/bevy-view.png" \
        >"$out/bevy.log" 2>&1 || status=1
    grep -vE " (INFO|WARN) " "$out/bevy.log" || true
    # The kernel table with cooperative matrices on (its matmul_coop cases run only so).
    echo "== bench --kernels --coop"
    /tmp/gpu-bundle/bin/bench --kernels --coop >"$out/kernels.log" 2>&1 || status=1
    cat "$out/kernels.log"
    echo "== bench"
    /tmp/gpu-bundle/bin/bench ${BENCH_ARGS:-} >"$out/bench.log" 2>&1 || status=1
    cat "$out/bench.log"
    # Vision and prefill on the tensor cores (decode is unchanged: GEMVs), to compare.
    echo "== bench --coop --batches"
    /tmp/gpu-bundle/bin/bench --coop --batches --new 16 >"$out/bench-coop.log" 2>&1 || status=1
    cat "$out/bench-coop.log"
    echo "== exit $status"
    exit $status
    ;;
*)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
