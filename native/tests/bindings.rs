//! The UniFFI bindings, generated from the built library as an integrator
//! would: Swift is generated and checked for the exported API; Kotlin is
//! compiled with JetBrains' compiler against JNA together with a JVM
//! harness implementing every port (`kotlin/Call.kt`); the Python module
//! drives a real call (`python/call.py`: alice calls bob, both on str0m
//! media, against an in-process switchboard).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `cdylib` cargo built next to this test's dependencies.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!(
        "{}native{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    [deps.join(&name), deps.parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .expect("the native cdylib is built with the tests")
}

fn generate(language: &str, out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args(["generate", "--no-format", "--library"])
        .arg(library())
        .args(["--language", language, "--out-dir"])
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "uniffi-bindgen {language}");
}

fn read_all(dir: &Path, extension: &str) -> String {
    let mut text = String::new();
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == extension) {
            text += &std::fs::read_to_string(entry).unwrap();
        }
    }
    text
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn swift_and_kotlin_bindings_expose_the_client_and_its_ports() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bindings");
    let _ = std::fs::remove_dir_all(&out);
    generate("swift", &out.join("swift"));
    generate("kotlin", &out.join("kotlin"));
    let swift = read_all(&out.join("swift"), "swift");
    let kotlin = read_all(&out.join("kotlin"), "kt");
    for (language, text, needles) in [
        (
            "swift",
            &swift,
            [
                "public protocol SystemCallUi",
                "public protocol MediaSession",
                "open class Client",
                "func handlePush(payload: String) -> PushDecision",
                "func incomingCallDisplayed(callUuid: String)",
                "public func classifyPush(",
            ],
        ),
        (
            "kotlin",
            &kotlin,
            [
                "interface SystemCallUi",
                "interface MediaSession",
                "open class Client",
                "fun `handlePush`(`payload`: kotlin.String): PushDecision",
                "fun `handlePushData`(`data`: Map<kotlin.String, kotlin.String>): PushDecision",
                "fun `classifyPushData`(",
            ],
        ),
    ] {
        for needle in needles {
            assert!(text.contains(needle), "{language} bindings lack `{needle}`");
        }
    }
}

#[test]
fn python_bindings_drive_a_call() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bindings-python");
    let _ = std::fs::remove_dir_all(&out);
    generate("python", &out);
    let lib = library();
    std::fs::copy(&lib, out.join(lib.file_name().unwrap())).unwrap();

    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("python"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/call.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", &out)
        .env("SWITCHBOARD_URL", &server.base)
        .env("ALICE_TOKEN", support::token("alice"))
        .env("BOB_TOKEN", support::token("bob"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // Bounded: the script's own waits are 15 s each.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Python call did not finish in 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("python call ok"), "{stdout}");
    runtime.block_on(server.stop());
}

/// Runs `command` to completion within `limit`, killing it past that.
fn run_bounded(mut command: Command, what: &str, limit: std::time::Duration) -> (bool, String) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish in {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The Android adapter's files compiled against SDK stand-ins (the rest
/// need notifications, services and org.webrtc: parsed and rule-checked by
/// capacitor/scripts/check_adapters.py; the plugin's README lists both).
const ANDROID_FILES_COMPILED_ON_THE_JVM: &[&str] = &[
    "TelecomCalls.kt",
    "SwitchboardCalls.kt",
    "ConfigStore.kt",
    "PlatformVerifier.kt",
    "SwitchboardMessagingService.kt",
    "CallActionReceiver.kt",
];

#[test]
fn kotlin_bindings_drive_a_call_and_the_android_mappings_on_the_jvm() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kotlin");
    let kotlinc = dir.join("node_modules/kotlin-compiler/bin/kotlinc");
    let jna = Path::new("/usr/share/java/jna.jar");
    assert!(
        kotlinc.exists() && jna.exists(),
        "the Kotlin test needs `npm ci` in {} and Debian's libjna-java: run ./scripts/test",
        dir.display()
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bindings-kotlin-jvm");
    let _ = std::fs::remove_dir_all(&out);
    generate("kotlin", &out.join("src"));
    let lib = library();
    std::fs::copy(&lib, out.join(lib.file_name().unwrap())).unwrap();
    let jar = out.join("call.jar");
    // The Android adapter compiles in the same run (one compiler start-up:
    // it is slow): its android.*-free translations and their test, and the
    // Telecom, FCM and state files against stand-ins of the SDK types they
    // use (capacitor/android/src/test/stubs; Core-Telecom's Flows and
    // suspend functions with the compiler's own kotlinx-coroutines).
    let android = Path::new(env!("CARGO_MANIFEST_DIR")).join("capacitor/android/src");
    let adapter = android.join("main/java/dev/switchboard/capacitor");
    let coroutines = dir.join("node_modules/kotlin-compiler/lib/kotlinx-coroutines-core-jvm.jar");
    let mut compile = Command::new(&kotlinc);
    compile
        .arg(out.join("src/dev/switchboard/core/native.kt"))
        .arg(dir.join("Call.kt"))
        .arg(adapter.join("core/Mapping.kt"))
        .arg(android.join("test/java/dev/switchboard/capacitor/core/MappingTest.kt"));
    for file in ANDROID_FILES_COMPILED_ON_THE_JVM {
        compile.arg(adapter.join(file));
    }
    for stub in std::fs::read_dir(android.join("test/stubs")).unwrap() {
        compile.arg(stub.unwrap().path());
    }
    compile
        .args(["-nowarn", "-include-runtime", "-cp"])
        .arg(format!("{}:{}", jna.display(), coroutines.display()))
        .arg("-d")
        .arg(&jar);
    let (compiled, text) = run_bounded(compile, "kotlinc", std::time::Duration::from_secs(400));
    assert!(compiled, "kotlinc failed:\n{text}");

    let classpath = format!("{}:{}", jar.display(), jna.display());
    let mut mappings = Command::new("java");
    mappings
        .arg(format!("-Djna.library.path={}", out.display()))
        .args([
            "-cp",
            &classpath,
            "dev.switchboard.capacitor.core.MappingTestKt",
        ]);
    let (mapped, text) = run_bounded(
        mappings,
        "the Android mappings",
        std::time::Duration::from_secs(60),
    );
    assert!(mapped && text.contains("android mappings ok"), "{text}");

    // Bob's ring exactly as the server's FCM sender builds it, as
    // `RemoteMessage.getData()` hands it over: one `key<TAB>value` per line.
    let ring = fcm_ring_map();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("kotlin"));
    let mut java = Command::new("java");
    java.arg(format!("-Djna.library.path={}", out.display()))
        .arg("-cp")
        .arg(format!("{}:{}", jar.display(), jna.display()))
        .arg("CallKt")
        .env("SWITCHBOARD_URL", &server.base)
        .env("ALICE_TOKEN", support::token("alice"))
        .env("BOB_TOKEN", support::token("bob"))
        .env("FCM_RING", ring)
        .env("SWITCHBOARD_CORE_LOG", "native=info");
    // Bounded: the harness's own waits are 15 s each.
    let (ran, text) = run_bounded(java, "the Kotlin call", std::time::Duration::from_secs(120));
    println!("{text}");
    runtime.block_on(server.stop());
    assert!(
        ran && text.contains("kotlin call ok"),
        "the Kotlin call failed:\n{text}"
    );
}

/// The data map of an FCM ring for alice's call to bob, from `control`'s
/// own sender, with the call id left as `CALL_ID` (the harness learns it).
fn fcm_ring_map() -> String {
    use control::call::{CallType, CallerDisplay};
    use control::device::{ApnsEnvironment, Platform};
    use control::push::payload::PushPayload;
    use control::push::{Outgoing, TokenKind, fcm};
    let now = native::unix_millis();
    let payload = PushPayload::incoming_call(
        "CALL_ID",
        "alice",
        CallType::Audio,
        now,
        now + 40_000,
        CallerDisplay::default(),
        now,
    );
    let push = Outgoing {
        call_id: "CALL_ID".into(),
        user_id: "bob".into(),
        device_id: "b-pixel".into(),
        platform: Platform::Android,
        token_kind: TokenKind::Fcm,
        token: "f".repeat(40),
        payload,
        expires_at: Some(now + 40_000),
        apns_environment: ApnsEnvironment::Production,
        bundle_id: None,
    };
    let message = fcm::message(&push, now);
    let data = message["message"]["data"].as_object().expect("a data map");
    data.iter()
        .map(|(key, value)| format!("{key}\t{}\n", value.as_str().expect("strings")))
        .collect()
}
