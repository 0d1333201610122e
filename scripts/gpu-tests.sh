#!/usr/bin/env bash
# The test suite and the bench on a machine that has a GPU but no Rust toolchain (the device
# machine): build and pack here, carry, unpack and run there.
#
#   here:    bash scripts/gpu-tests.sh pack     # -> .device/bundle.tar.xz (git-ignored)
#            (BENCH_BASE=path/to/older/bench also times that build, before and after)
#   there:   bash scripts/gpu-tests.sh run      # from the repository root; logs to $OUT if set
#
# With the device tool: carry [".device", ".gl", ".whl"] (the Vulkan loader .debs in .gl, the
# server tests' Python client as wheels in .whl; see the device README). The bundle also holds tests/data (Gemma's tokenizer, from
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
    # A bench built from an earlier commit, to time before and after in one call.
    [ -z "${BENCH_BASE:-}" ] || cp "$BENCH_BASE" .device/bin/bench-base
    # The Bevy example (its own crate; see examples/bevy/Cargo.toml for the Rust version),
    # optimised for size: 13 MB in the bundle against 23 unoptimised, which would not fit the
    # carry limit (13 minutes from clean on 2 cores).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_STRIP=true \
        cargo build --release --manifest-path examples/bevy/Cargo.toml --ignore-rust-version
    cp examples/bevy/target/release/paligemma-bevy .device/bin/
    strip .device/bin/* 2>/dev/null || true
    [ -f tests/data/gemma-tokenizer/tokenizer.json ] || bash scripts/fetch-gemma-tokenizer.sh
    cp -r tests/data .device/data
    # spirv-val for tests/portability (a static binary from Debian's spirv-tools), the
    # transformers baseline, and where cargo built the tests (paths compiled into them).
    command -v spirv-val >/dev/null && cp "$(command -v spirv-val)" .device/bin/
    cp ../shared/tools/hf_bench.py .device/ 2>/dev/null || echo "no ../shared/tools/hf_bench.py: the baseline will not run"
    echo "$root" >.device/root
    # The examples' test harnesses hold no tests. One xz stream with a dictionary larger than
    # the bundle: each test binary links the whole library, so most of it is found again (33
    # MiB instead of 38, 5 minutes on 2 cores).
    rm -f .device/bin/test-example-*
    tar -C .device --sort=name -cf - bin data root $(cd .device && ls hf_bench.py 2>/dev/null) |
        xz -9e --lzma2=preset=9e,dict=1536MiB -T1 >.device/bundle.tar.xz
    rm -rf .device/bin .device/data .device/root .device/hf_bench.py
    # What travels: the tracked files, this bundle, .gl and .whl, 64 MiB at most together.
    tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
    bundle=$(stat -c %s .device/bundle.tar.xz)
    echo "bundle $((bundle >> 20)) MiB + tracked files $((tracked >> 20)) MiB (+ .gl) of the 64 MiB carried"
    if [ $(((bundle + tracked) >> 20)) -gt 57 ]; then
        echo "too large to carry with .gl: trim the bundle" >&2
        exit 1
    fi
    ;;
run)
    # Steps in order of what the GPU half of the speed issue needs most, each under its own
    # time limit; a step that would start after $GPU_BUDGET seconds is skipped (and says so),
    # so the call ends inside the device tool's limit. Every log goes to $OUT/logs.tar.gz
    # (re-packed after each step: a call cut short still returns what ran) and a summary to
    # $OUT/summary.txt.
    t0=$(date +%s)
    budget="${GPU_BUDGET:-300}"
    if ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    # Vulkan only: with wgpu's GL backend also initialised (EGL on NVIDIA's driver), the tests
    # that each make a device hung on the H200 (2026-12-04); with Vulkan alone every test passed
    # (docs/PERF.md: likely the cause, not isolated).
    export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
    nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ]; then export VK_DRIVER_FILES="$nvidia_icd"; fi
    out="${OUT:-/tmp/gpu-tests}"
    logs=/tmp/gpu-logs
    mkdir -p "$out" "$logs" /tmp/gpu-bundle
    tar -C /tmp/gpu-bundle -xJf .device/bundle.tar.xz
    b=/tmp/gpu-bundle/bin
    export PATH="$b:$PATH" PALIGEMMA_BIN="$b/paligemma"
    # The tests find the CLI, the fixtures and the sources where cargo built them: make that
    # path this checkout (the device copies the tree elsewhere).
    built="$(cat /tmp/gpu-bundle/root)"
    if [ "$built" != "$PWD" ] && [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
    fi
    mkdir -p "$built/target/release" tests/data
    cp "$b/paligemma" "$built/target/release/paligemma"
    cp -rn /tmp/gpu-bundle/data/. tests/data/
    # The server tests' client (openai), carried as wheels.
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    fi
    status=0
    summary="$out/summary.txt"
    : >"$summary"
    # step NAME SECONDS COMMAND...: runs COMMAND with its output in NAME.log.
    step() {
        local name="$1" limit="$2" rc=0
        shift 2
        local now=$(($(date +%s) - t0))
        # No step runs past the budget by more than a minute.
        [ "$limit" -le $((budget + 60 - now)) ] || limit=$((budget + 60 - now))
        if [ "$now" -ge "$budget" ]; then
            echo "-- $name: skipped at ${now}s (budget ${budget}s)" | tee -a "$summary"
            return
        fi
        echo "== $name (at ${now}s, limit ${limit}s)"
        if [ "$(type -t "$1")" = function ]; then
            "$@" >"$logs/$name.log" 2>&1 || rc=$?
        else
            timeout -k 5 "$limit" "$@" >"$logs/$name.log" 2>&1 || rc=$?
        fi
        [ "$rc" -eq 0 ] || status=1
        echo "-- $name: exit $rc after $(($(date +%s) - t0 - now))s" | tee -a "$summary"
        tar -C "$logs" -czf "$out/logs.tar.gz" .
    }
    # The test binaries one after another, each under its own limit (one hang costs one).
    tests() {
        local rc=0 t
        for t in "$b"/test-*; do
            echo "== $(basename "$t")"
            if [ $(($(date +%s) - t0)) -ge $((budget + 60)) ]; then
                echo "!! the rest not run: past the budget"
                return 1
            fi
            timeout -k 5 60 "$t" 2>&1 || { rc=$?; echo "!! $(basename "$t") exited $rc"; }
        done
        return $rc
    }
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
        "$b/paligemma" --version || true
    } >"$logs/device.log" 2>&1
    cat "$logs/device.log"
    # Every figure the issue asks for at 224 px, with the per-kernel profile.
    step bench-224 60 bench --res 224 --profile --batches 1,16 --new 64
    [ ! -x "$b/bench-base" ] || step bench-224-base 60 bench-base --res 224 --batches 1,16 --new 64
    step bench-coop 60 bench --coop --res 224,448,896 --batches --new 32 --repeat 2
    step bench-224-q4 40 bench --res 224 --precision q4 --batches --new 64
    step tests 150 tests
    step kernels-coop 40 bench --kernels --coop
    step bevy 40 paligemma-bevy tests/fixtures/bf16/model --headless --check --captures 3 \
        --every 4 --prompt "caption en" --prompt "detect cat" --screenshot "$out/bevy-view.png"
    step hf-bench 60 python3 /tmp/gpu-bundle/hf_bench.py --res 224 --new 64
    step bench-448-896 60 bench --res 448,896 --batches --new 32 --repeat 1
    step bench-10b 60 bench --decoder gemma2-10b --res 224 --repeat 1 --batches --new 32
    step bench-28b 90 bench --decoder gemma2-28b --res 224 --repeat 1 --batches --new 32
    grep -hE "^(adapter|device memory|\| )" "$logs"/bench-*.log "$logs/kernels-coop.log" 2>/dev/null >>"$summary" || true
    grep -hE "^test result|^!!|FAILED|panicked" "$logs/tests.log" >>"$summary" 2>/dev/null || true
    grep -h "^{" "$logs/hf-bench.log" >>"$summary" 2>/dev/null || true
    echo "== exit $status after $(($(date +%s) - t0))s" | tee -a "$summary"
    exit $status
    ;;
*)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
