#!/usr/bin/env bash
# Builds the library for the browser (wasm32-unknown-unknown) with Debian's rustc-web, as
# ../shared/docs/browser.md describes: the step towards the browser issue that shows the crate
# compiles there. It does not run anything: the model-level API still blocks on the GPU
# (pollster), which a web page cannot do. About 8 minutes from clean on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s rustc-web >/dev/null 2>&1; then
  apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 >/dev/null
fi
PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/wasm}" \
  /usr/bin/cargo build --lib --no-default-features -Zbuild-std=std,panic_abort \
  --target wasm32-unknown-unknown "$@"
