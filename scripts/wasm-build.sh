#!/usr/bin/env bash
# Builds the JS package for the browser and Node (`web/pkg/`): the library for
# wasm32-unknown-unknown with the `web` feature (src/web.rs), through Debian's rustc-web (its
# wasm32 std built from source; docs/BROWSER.md has why, and the commands for a rustup wasm32
# target instead), then wasm-bindgen's glue for `--target web` (pages) and
# `--target nodejs` (web/pkg-node/, the Node + Dawn test). The bindgen CLI is installed once at
# exactly the version in Cargo.lock (2.5 minutes, once). The profile is `release` (4 minutes
# from clean on 2 cores, a 5 MB .wasm) unless WASM_PROFILE says otherwise (the tests use
# `wasm-test`: 2 minutes, 24 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s rustc-web >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 >/dev/null
fi
target_dir="${CARGO_TARGET_DIR:-target/wasm}"
profile="${WASM_PROFILE:-release}"
PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target_dir" \
  /usr/bin/cargo rustc --lib --crate-type cdylib --no-default-features --features web \
  --profile "$profile" -Zbuild-std=std,panic_abort --target wasm32-unknown-unknown

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  cargo install --quiet wasm-bindgen-cli --version "$version"
fi
wasm="$target_dir/wasm32-unknown-unknown/$profile/paligemma.wasm"
wasm-bindgen --target web --out-dir web/pkg --out-name paligemma "$wasm"
wasm-bindgen --target nodejs --out-dir web/pkg-node --out-name paligemma "$wasm"
ls -l web/pkg/paligemma_bg.wasm
