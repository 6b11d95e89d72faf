#!/usr/bin/env bash
# Builds the client core for Android: libnative.so per ABI (without the
# str0m media port: phones use libwebrtc) into
# native/bindings/out/android/jniLibs/<abi>/, plus the Kotlin bindings
# (package dev.switchboard.core, over JNA) for the plugin's Android module.
#
# Needs the Android NDK (ANDROID_NDK_HOME), cargo-ndk (`cargo install
# cargo-ndk`), CMake (aws-lc-rs, rustls' crypto, builds C) and `rustup
# target add aarch64-linux-android armv7-linux-androideabi
# x86_64-linux-android`. The app also needs JNA (`net.java.dev.jna:jna`,
# the `@aar` artifact) and rustls-platform-verifier's Android component
# (its Maven repository ships inside the crate's source), and must call
# `rustls_platform_verifier::android::init_hosted` (through the plugin)
# before the first `Client`. NOT RUN in CI: no NDK or Android Rust targets
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
echo "$out/jniLibs and $out/kotlin"
