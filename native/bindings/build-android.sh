#!/usr/bin/env bash
# Builds the client core for Android: libnative.so per ABI (without the
# str0m media port: phones use libwebrtc) into
# the plugin's android/src/main/jniLibs/<abi>/, plus the Kotlin bindings
# (package dev.switchboard.core, over JNA) and the verifier's Android
# component's version, where android/build.gradle expects them.
#
# Needs the Android NDK (ANDROID_NDK_HOME), cargo-ndk (`cargo install
# cargo-ndk`), CMake (aws-lc-rs, rustls' crypto, builds C) and `rustup
# target add aarch64-linux-android armv7-linux-androideabi
# x86_64-linux-android`. The app also needs JNA (`net.java.dev.jna:jna`,
# the `@aar` artifact) and rustls-platform-verifier's Android component
# (from the verifier's Maven archive on GitHub, at the version written
# below), and the plugin's PlatformVerifier.init hands the core the app's
# Context before the first `Client`. NOT RUN in CI: no NDK or Android Rust targets
# are reachable where the suite runs, so this script is unverified; the
# Kotlin bindings themselves are compiled and run on the JVM by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bindings/out/android
api=${ANDROID_MIN_SDK:-24}

rm -rf "$out" && mkdir -p "$out/jniLibs" "$out/kotlin"
cargo ndk --platform "$api" -t arm64-v8a -t armeabi-v7a -t x86_64 \
  -o "$out/jniLibs" build -p native --lib --release --no-default-features
cargo run --quiet -p native --no-default-features --bin uniffi-bindgen -- \
  generate --library "$out/jniLibs/arm64-v8a/libnative.so" --language kotlin \
  --out-dir "$out/kotlin"
# Into the plugin's Android library (android/build.gradle expects them),
# with the version of rustls-platform-verifier's Android component: its
# Kotlin half must be the exact version of the crate linked into
# libnative.so (rustls-platform-verifier-android in Cargo.lock), and the
# published npm package carries no Cargo.lock.
plugin=capacitor/android
rm -rf "$plugin/src/main/jniLibs" "$plugin/src/main/java/dev/switchboard/core"
cp -R "$out/jniLibs" "$plugin/src/main/jniLibs"
cp -R "$out/kotlin/dev/switchboard/core" "$plugin/src/main/java/dev/switchboard/core"
python3 - ../Cargo.lock > "$plugin/rustls-platform-verifier.version" <<'PY'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
print(next(p["version"] for p in lock["package"] if p["name"] == "rustls-platform-verifier-android"))
PY
echo "$plugin: jniLibs, the Kotlin bindings, rustls-platform-verifier.version"
