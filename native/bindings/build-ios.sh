#!/usr/bin/env bash
# Builds the client core for iOS: a static library per target (device and
# both simulators, without the str0m media port: phones use libwebrtc),
# wrapped as SwitchboardCore.xcframework with its C header, plus the Swift
# bindings (SwitchboardCore.swift), both put where the plugin's
# Package.swift and podspec expect them (native/capacitor/ios/). The staticlib crate type is asked for here, not declared in
# Cargo.toml, so test builds never link one.
#
# Needs macOS with Xcode (xcodebuild, lipo), CMake (aws-lc-rs, rustls'
# crypto, builds C) and `rustup target add aarch64-apple-ios
# aarch64-apple-ios-sim x86_64-apple-ios`. NOT RUN in CI: no macOS or iOS
# Rust targets are reachable where the suite runs, so this script is
# unverified until someone runs it on a Mac.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bindings/out/ios
profile=release
export IPHONEOS_DEPLOYMENT_TARGET=${IPHONEOS_DEPLOYMENT_TARGET:-15.0}

for target in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  cargo rustc -p native --lib --profile "$profile" --no-default-features \
    --target "$target" --crate-type staticlib
done
lib() { echo "../target/$1/$profile/libnative.a"; }

rm -rf "$out" && mkdir -p "$out/headers" "$out/swift"
# The bindings read the metadata UniFFI put in the library itself.
cargo run --quiet -p native --no-default-features --bin uniffi-bindgen -- \
  generate --library "$(lib aarch64-apple-ios)" --language swift --out-dir "$out/swift"
cp "$out/swift/SwitchboardCoreFFI.h" "$out/headers/"
cp "$out/swift/SwitchboardCoreFFI.modulemap" "$out/headers/module.modulemap"

lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" \
  -output "$out/libnative-simulator.a"
xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers "$out/headers" \
  -library "$out/libnative-simulator.a" -headers "$out/headers" \
  -output "$out/SwitchboardCore.xcframework"
# Into the plugin's Swift package (Package.swift names both).
plugin=capacitor/ios
rm -rf "$plugin/Frameworks/SwitchboardCore.xcframework" "$plugin/Sources/SwitchboardCore"
mkdir -p "$plugin/Frameworks" "$plugin/Sources/SwitchboardCore"
cp -R "$out/SwitchboardCore.xcframework" "$plugin/Frameworks/"
cp "$out/swift/SwitchboardCore.swift" "$plugin/Sources/SwitchboardCore/"
echo "$plugin/Frameworks/SwitchboardCore.xcframework and $plugin/Sources/SwitchboardCore/"
