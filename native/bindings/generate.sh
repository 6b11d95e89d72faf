#!/usr/bin/env bash
# Generates the client core's bindings into native/bindings/out/<language>/:
# Swift and Kotlin from the phone build (no str0m media port: phones use
# the platform's libwebrtc), Python from the default build (with the str0m
# media port, as the tests and bots use it). The tests generate the same
# into target/tmp and drive calls through the Kotlin and Python ones.
# For the phone libraries themselves: build-ios.sh, build-android.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=$profile; [ "$dir" = dev ] && dir=debug
host_lib() { # the cdylib just built for this machine
  local lib=../target/$dir/libnative.so
  [ -f "$lib" ] || lib=../target/$dir/libnative.dylib
  echo "$lib"
}
bindgen() { # features, language
  cargo run --quiet --profile "$profile" -p native $1 --bin uniffi-bindgen -- \
    generate --library "$(host_lib)" --language "$2" --out-dir "bindings/out/$2"
}

cargo build --profile "$profile" -p native --lib --no-default-features
for language in swift kotlin; do bindgen --no-default-features "$language"; done
cargo build --profile "$profile" -p native --lib
bindgen "" python
echo "bindings in $(pwd)/bindings/out"
