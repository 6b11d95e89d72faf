#!/usr/bin/env bash
# Builds the client core and generates its Swift, Kotlin and Python bindings
# into native/bindings/out/<language>/ (the tests generate the same into
# target/tmp and drive a call through the Python ones).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
cargo build --profile "$profile" -p native
lib=../target/$profile/libnative.so
[ -f "$lib" ] || lib=../target/$profile/libnative.dylib
for language in swift kotlin python; do
  cargo run --quiet --profile "$profile" -p native --bin uniffi-bindgen -- \
    generate --library "$lib" --language "$language" --out-dir "bindings/out/$language"
done
echo "bindings in $(pwd)/bindings/out"
