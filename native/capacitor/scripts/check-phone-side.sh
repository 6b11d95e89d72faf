#!/usr/bin/env bash
# What can be checked of the plugin's iOS and Android sides without Xcode
# or the Android SDK (neither runs where the suite runs; see README.md,
# "What is checked here"):
# - packaging: npm pack's file list, one plugin name everywhere, every JS
#   method on web, iOS and Android, the manifest (check_packaging.py);
# - the adapters' rules on their syntax trees, against the Swift and Kotlin
#   bindings of the phone build of the core (check_adapters.py, tree-sitter
#   from PyPI in a venv under target/).
# The android.*-free Kotlin is compiled and run by native/tests/bindings.rs.
# Expects `npm ci && npm run build` done in native/capacitor.
set -euo pipefail
cd "$(dirname "$0")/../../.."
plugin=native/capacitor
python3 "$plugin/scripts/check_packaging.py"

venv=target/adapter-rules-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$plugin/scripts/requirements.txt"

# The bindings the phones get: the core without its str0m media port.
cargo build --quiet -p native --lib --no-default-features
out=target/phone-bindings
for language in swift kotlin; do
  cargo run --quiet -p native --no-default-features --bin uniffi-bindgen -- \
    generate --no-format --library target/debug/libnative.so --language "$language" \
    --out-dir "$out/$language"
done
"$venv/bin/python" "$plugin/scripts/check_adapters.py" \
  --swift-bindings "$out/swift/SwitchboardCore.swift" \
  --kotlin-bindings "$out/kotlin/dev/switchboard/core/native.kt"
