// swift-tools-version: 5.9
// The plugin as a Swift package (Capacitor 8 installs iOS plugins through
// Swift Package Manager and skips plugins without a Package.swift). The
// Rust core ships as an XCFramework built by native/bindings/build-ios.sh,
// which also writes its generated Swift into ios/Sources/SwitchboardCore.
import PackageDescription

let package = Package(
    name: "SwitchboardCapacitor",
    platforms: [.iOS(.v15)],
    products: [
        .library(name: "SwitchboardCapacitor", targets: ["SwitchboardPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/ionic-team/capacitor-swift-pm.git", from: "8.0.0"),
        .package(url: "https://github.com/stasel/WebRTC.git", from: "137.0.0"),
    ],
    targets: [
        .binaryTarget(name: "SwitchboardCoreFFI", path: "ios/Frameworks/SwitchboardCore.xcframework"),
        .target(
            name: "SwitchboardCore",
            dependencies: ["SwitchboardCoreFFI"],
            path: "ios/Sources/SwitchboardCore"),
        .target(
            name: "SwitchboardPlugin",
            dependencies: [
                .product(name: "Capacitor", package: "capacitor-swift-pm"),
                .product(name: "Cordova", package: "capacitor-swift-pm"),
                .product(name: "WebRTC", package: "WebRTC"),
                "SwitchboardCore",
            ],
            path: "ios/Sources/SwitchboardPlugin"),
    ]
)
