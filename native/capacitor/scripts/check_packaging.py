#!/usr/bin/env python3
"""What Capacitor 8, CocoaPods, Gradle and the Play Store need from the
plugin's package, checked without them (none run where the suite runs):

- `npm pack --dry-run` ships Package.swift, the podspec, every file under
  ios/Sources/ and android/src/main/, the Gradle files and the built JS;
- one plugin name everywhere: `registerPlugin` (JS), `jsName` (Swift),
  `@CapacitorPlugin(name = ...)` (Kotlin); one package name in
  Package.swift's product and the podspec; package.json's `capacitor`
  section points at both platform folders;
- every method of the JS API (`SwitchboardPlugin` in definitions.ts) is a
  method on the web, iOS (declared in `pluginMethods` and defined) and
  Android (`@PluginMethod`), and the phones emit exactly the events
  `SwitchboardEvents` declares;
- the AndroidManifest asks for each permission the adapter uses, declares
  the foreground service with its types and the FCM service, keeps the
  incoming-call activity over the lock screen, and declares no
  ConnectionService of its own (Core-Telecom's manifest has it);
- build.gradle: compileSdk 36, minSdk 24.

Usage: check_packaging.py [--npm-pack-json FILE]   (default: runs npm pack)
Each rule first catches a broken example (self-test). Exit status 1 with
one line per violation.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parent.parent
ANDROID_NS = "{http://schemas.android.com/apk/res/android}"
TOOLS_NS = "{http://schemas.android.com/tools}"

PLUGIN_NAME = "Switchboard"
PACKAGE_NAME = "SwitchboardCapacitor"
# Methods every Capacitor plugin has from its base class.
BUILT_IN = {"addListener", "removeAllListeners"}
REQUIRED_PERMISSIONS = {
    "RECORD_AUDIO", "CAMERA", "BLUETOOTH_CONNECT", "POST_NOTIFICATIONS",
    "USE_FULL_SCREEN_INTENT", "FOREGROUND_SERVICE", "FOREGROUND_SERVICE_PHONE_CALL",
    "FOREGROUND_SERVICE_MICROPHONE", "FOREGROUND_SERVICE_CAMERA", "INTERNET",
}
SERVICE_TYPES = {"phoneCall", "microphone", "camera"}
# Android 14 refuses a foreground service type without its permission.
TYPE_PERMISSIONS = {"phoneCall": "FOREGROUND_SERVICE_PHONE_CALL",
                    "microphone": "FOREGROUND_SERVICE_MICROPHONE",
                    "camera": "FOREGROUND_SERVICE_CAMERA"}


def read(relative):
    return (ROOT / relative).read_text()


def kotlin_sources():
    return "\n".join(p.read_text() for p in sorted((ROOT / "android/src/main/java").rglob("*.kt")))


def swift_sources():
    return "\n".join(p.read_text() for p in sorted((ROOT / "ios/Sources/SwitchboardPlugin").glob("*.swift")))


def interface_body(ts, name):
    start = re.search(r"export interface %s\b[^{]*\{" % name, ts)
    if not start:
        return ""
    depth, i = 1, start.end()
    while depth and i < len(ts):
        depth += {"{": 1, "}": -1}.get(ts[i], 0)
        i += 1
    return ts[start.end():i - 1]


def js_methods(definitions):
    body = interface_body(definitions, "SwitchboardPlugin")
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return set(re.findall(r"^\s*(\w+)\s*(?:<[^>]*>)?\(", body, flags=re.M)) - BUILT_IN


def js_events(definitions):
    body = interface_body(definitions, "SwitchboardEvents")
    return set(re.findall(r"^\s*(\w+)\s*:", body, flags=re.M))


class Report:
    def __init__(self):
        self.problems = []

    def fail(self, message):
        self.problems.append(message)


def check_files(report, packed):
    names = {f["path"] for f in packed}
    for required in ["Package.swift", f"{PACKAGE_NAME}.podspec", "android/build.gradle",
                     "android/consumer-rules.pro", "dist/esm/index.js", "dist/esm/index.d.ts",
                     "dist/esm/definitions.d.ts"]:
        if required not in names:
            report.fail(f"npm pack: {required} is not in the package")
    for folder in ["ios/Sources", "android/src/main"]:
        on_disk = [p for p in (ROOT / folder).rglob("*") if p.is_file()]
        if not on_disk:
            report.fail(f"{folder}: no files")
        for path in on_disk:
            relative = path.relative_to(ROOT).as_posix()
            if relative not in names:
                report.fail(f"npm pack: {relative} is not in the package")
    for name in names:
        if name.startswith(("node_modules/", "dist-test/", "test/")):
            report.fail(f"npm pack: {name} should not ship")


def check_names(report, index_ts, swift, kotlin, package_swift, podspec, package_json):
    registered = re.search(r"registerPlugin<\w+>\(\s*\"(\w+)\"", index_ts)
    if not registered or registered.group(1) != PLUGIN_NAME:
        report.fail(f"src/index.ts: registerPlugin must name \"{PLUGIN_NAME}\"")
    js_name = re.search(r"jsName\s*=\s*\"(\w+)\"", swift)
    if not js_name or js_name.group(1) != PLUGIN_NAME:
        report.fail(f"Swift: jsName must be \"{PLUGIN_NAME}\"")
    annotated = re.search(r"@CapacitorPlugin\(\s*name\s*=\s*\"(\w+)\"", kotlin)
    if not annotated or annotated.group(1) != PLUGIN_NAME:
        report.fail(f"Kotlin: @CapacitorPlugin(name = \"{PLUGIN_NAME}\") is missing")
    product = re.search(r"\.library\(\s*name:\s*\"(\w+)\"", package_swift)
    package = re.search(r"Package\(\s*name:\s*\"(\w+)\"", package_swift)
    if not product or product.group(1) != PACKAGE_NAME or not package or package.group(1) != PACKAGE_NAME:
        report.fail(f"Package.swift: the package and its product must be {PACKAGE_NAME}")
    pod = re.search(r"s\.name\s*=\s*'(\w+)'", podspec)
    if not pod or pod.group(1) != PACKAGE_NAME:
        report.fail(f"podspec: s.name must be {PACKAGE_NAME}")
    capacitor = json.loads(package_json).get("capacitor", {})
    if capacitor.get("ios", {}).get("src") != "ios" or capacitor.get("android", {}).get("src") != "android":
        report.fail("package.json: capacitor.ios.src / capacitor.android.src must be ios / android")


def check_methods(report, definitions, web_ts, swift, kotlin):
    methods = js_methods(definitions)
    if not methods:
        report.fail("definitions.ts: no SwitchboardPlugin methods found")
    declared = set(re.findall(r"CAPPluginMethod\(name:\s*\"(\w+)\"", swift))
    swift_defined = set(re.findall(r"@objc\s+(?:override\s+)?(?:public\s+)?func\s+(\w+)\(\s*_\s+call:\s*CAPPluginCall", swift))
    kotlin_defined = set(re.findall(r"@PluginMethod(?:\([^)]*\))?\s+(?:override\s+)?fun\s+(\w+)\(", kotlin))
    web_defined = set(re.findall(r"^  (?:async\s+)?(\w+)\([^)]*\)\s*:\s*Promise<", web_ts, flags=re.M))
    for method in sorted(methods):
        if method not in web_defined:
            report.fail(f"web: {method} is in the JS API but not in SwitchboardWeb")
        if method not in declared:
            report.fail(f"iOS: {method} is not in pluginMethods")
        if method not in swift_defined:
            report.fail(f"iOS: no @objc func {method}(_ call: CAPPluginCall)")
        if method not in kotlin_defined:
            report.fail(f"Android: no @PluginMethod fun {method}")
    for method in sorted(declared - methods):
        report.fail(f"iOS: pluginMethods has {method}, which the JS API does not")
    for method in sorted(kotlin_defined - methods):
        report.fail(f"Android: @PluginMethod {method} is not in the JS API")


def check_events(report, definitions, swift, kotlin):
    events = js_events(definitions)
    for platform, source in [("iOS", swift), ("Android", kotlin)]:
        emitted = set(re.findall(r"\bemit\(\s*\"(\w+)\"", source))
        for event in sorted(emitted - events):
            report.fail(f"{platform}: emits {event}, which SwitchboardEvents does not declare")
        for event in sorted(events - emitted):
            report.fail(f"{platform}: never emits {event}")


def check_manifest(report, manifest_xml):
    try:
        root = ET.fromstring(manifest_xml)
    except ET.ParseError as e:
        report.fail(f"AndroidManifest.xml does not parse: {e}")
        return
    asked = {p.get(ANDROID_NS + "name", "").removeprefix("android.permission.")
             for p in root.iter("uses-permission")}
    for permission in sorted(REQUIRED_PERMISSIONS - asked):
        report.fail(f"AndroidManifest.xml: no uses-permission {permission}")
    services = {s.get(ANDROID_NS + "name", ""): s for s in root.iter("service")}
    fgs = services.get("dev.switchboard.capacitor.CallForegroundService")
    if fgs is None:
        report.fail("AndroidManifest.xml: the CallForegroundService is not declared")
    else:
        types = set((fgs.get(ANDROID_NS + "foregroundServiceType") or "").split("|"))
        for missing in sorted(SERVICE_TYPES - types):
            report.fail(f"AndroidManifest.xml: the foreground service lacks type {missing}")
        for kind in sorted(types & SERVICE_TYPES):
            if TYPE_PERMISSIONS[kind] not in asked:
                report.fail(f"AndroidManifest.xml: type {kind} without {TYPE_PERMISSIONS[kind]}")
    fcm = services.get("dev.switchboard.capacitor.SwitchboardMessagingService")
    actions = {a.get(ANDROID_NS + "name") for a in (fcm.iter("action") if fcm is not None else [])}
    if "com.google.firebase.MESSAGING_EVENT" not in actions:
        report.fail("AndroidManifest.xml: no FCM service with MESSAGING_EVENT")
    for name, service in services.items():
        if service.get(ANDROID_NS + "permission") == "android.permission.BIND_TELECOM_CONNECTION_SERVICE":
            report.fail(f"AndroidManifest.xml: {name} is a second ConnectionService (Core-Telecom declares one)")
    overridden = {o for u in root.iter("uses-sdk")
                  for o in (u.get(TOOLS_NS + "overrideLibrary") or "").split(",")}
    if "androidx.core.telecom" not in overridden:
        report.fail("AndroidManifest.xml: minSdk 24 under Core-Telecom's 26 needs "
                    "tools:overrideLibrary=\"androidx.core.telecom\"")
    activities = {a.get(ANDROID_NS + "name"): a for a in root.iter("activity")}
    ringing = activities.get("dev.switchboard.capacitor.IncomingCallActivity")
    if ringing is None or ringing.get(ANDROID_NS + "showWhenLocked") != "true" \
            or ringing.get(ANDROID_NS + "turnScreenOn") != "true":
        report.fail("AndroidManifest.xml: IncomingCallActivity must show when locked and turn the screen on")


def check_gradle(report, gradle):
    if not re.search(r"compileSdk\s+36\b", gradle):
        report.fail("build.gradle: compileSdk must be 36")
    if not re.search(r"minSdk\s+24\b", gradle):
        report.fail("build.gradle: minSdk must be 24")


def check(packed):
    report = Report()
    definitions = read("src/definitions.ts")
    swift, kotlin = swift_sources(), kotlin_sources()
    check_files(report, packed)
    check_names(report, read("src/index.ts"), swift, kotlin, read("Package.swift"),
                read(f"{PACKAGE_NAME}.podspec"), read("package.json"))
    check_methods(report, definitions, read("src/web.ts"), swift, kotlin)
    check_events(report, definitions, swift, kotlin)
    check_manifest(report, read("android/src/main/AndroidManifest.xml"))
    check_gradle(report, read("android/build.gradle"))
    return report.problems


def self_test(packed):
    """Each rule must catch a broken copy of the real inputs."""
    problems = []
    definitions, swift, kotlin = read("src/definitions.ts"), swift_sources(), kotlin_sources()
    manifest, web_ts = read("android/src/main/AndroidManifest.xml"), read("src/web.ts")

    def expect(label, run):
        report = Report()
        run(report)
        if not report.problems:
            problems.append(f"self-test: {label} was not caught")

    expect("a missing Package.swift", lambda r: check_files(r, [f for f in packed if f["path"] != "Package.swift"]))
    expect("a Kotlin file left out", lambda r: check_files(
        r, [f for f in packed if not f["path"].endswith("TelecomCalls.kt")]))
    expect("a renamed jsName", lambda r: check_names(
        r, read("src/index.ts"), swift.replace('jsName = "Switchboard"', 'jsName = "SwitchBoard"'), kotlin,
        read("Package.swift"), read(f"{PACKAGE_NAME}.podspec"), read("package.json")))
    expect("a podspec under another name", lambda r: check_names(
        r, read("src/index.ts"), swift, kotlin, read("Package.swift"),
        read(f"{PACKAGE_NAME}.podspec").replace("'SwitchboardCapacitor'", "'Switchboard'"), read("package.json")))
    expect("a JS method iOS lacks", lambda r: check_methods(
        r, definitions, web_ts, swift.replace('CAPPluginMethod(name: "setHeld"', 'CAPPluginMethod(name: "setHold"'),
        kotlin))
    expect("a JS method Android lacks", lambda r: check_methods(
        r, definitions, web_ts, swift, kotlin.replace("fun getActiveCalls(", "fun getCalls(")))
    expect("a JS method the web lacks", lambda r: check_methods(
        r, definitions, web_ts.replace("switchCamera(", "flipCamera("), swift, kotlin))
    expect("an undeclared event", lambda r: check_events(
        r, definitions, swift.replace('emit("muteChanged"', 'emit("mutedChanged"'), kotlin))
    expect("a missing permission", lambda r: check_manifest(
        r, manifest.replace("android.permission.FOREGROUND_SERVICE_PHONE_CALL", "android.permission.X")))
    expect("a foreground service without a type", lambda r: check_manifest(
        r, manifest.replace('android:foregroundServiceType="phoneCall|microphone|camera"',
                            'android:foregroundServiceType="microphone|camera"')))
    expect("a second ConnectionService", lambda r: check_manifest(r, manifest.replace(
        "</application>",
        '<service android:name="x.Conn" android:permission="android.permission.BIND_TELECOM_CONNECTION_SERVICE" />'
        "</application>")))
    expect("an activity that stays behind the lock screen", lambda r: check_manifest(
        r, manifest.replace('android:showWhenLocked="true"', 'android:showWhenLocked="false"')))
    expect("minSdk 24 without overriding Core-Telecom's", lambda r: check_manifest(
        r, manifest.replace('tools:overrideLibrary="androidx.core.telecom"', "")))
    expect("an old compileSdk", lambda r: check_gradle(r, read("android/build.gradle").replace(
        "compileSdk 36", "compileSdk 34")))
    return problems


def npm_pack():
    out = subprocess.run(["npm", "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=ROOT,
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)[0]["files"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--npm-pack-json", type=pathlib.Path)
    args = parser.parse_args()
    packed = json.loads(args.npm_pack_json.read_text())[0]["files"] if args.npm_pack_json else npm_pack()
    problems = self_test(packed) + check(packed)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"packaging holds: {len(packed)} files, {len(js_methods(read('src/definitions.ts')))} JS methods "
          "on web, iOS and Android")
    return 0


if __name__ == "__main__":
    sys.exit(main())
