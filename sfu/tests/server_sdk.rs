//! The Node server SDK (`sdk/node`) against the real `switchboard`: its own
//! tests (node's runner) mint tokens, drive a call through every route,
//! check typed errors and retries, and receive the server's push and
//! call-event webhooks on a local port, verified by the SDK's
//! `verifyWebhook` (and the events by the Standard Webhooks library). Then the package
//! is packed and installed into a scratch project that imports it.
//!
//! Needs `npm ci` in `sdk/node` (`./scripts/test` does it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::live::{API_KEY_ID, API_KEY_SECRET, free_port, scratch_dir, spawn_switchboard};
use common::process::run_bounded;

const WEBHOOK_SECRET: &str = "sdk-webhook-secret-sdk-webhook-secret";
const EVENT_WEBHOOK_SECRET: &str = "whsec_c2RrLWV2ZW50LXNlY3JldC1zZGstZXZlbnQtc2VjcmV0";

fn sdk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/node");
    assert!(
        dir.join("node_modules/jose").exists() && dir.join("node_modules/typescript").exists(),
        "the SDK tests need `npm ci` in {}: run ./scripts/test",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_drives_a_real_server_and_verifies_its_webhooks() {
    let dir = sdk_dir();
    let webhook_port = free_port();
    let webhook_url = format!("http://127.0.0.1:{webhook_port}/push");
    let event_url = format!("http://127.0.0.1:{webhook_port}/events");
    let server = spawn_switchboard(
        &scratch_dir(),
        free_port(),
        free_port(),
        &[
            ("SWITCHBOARD_PUSH_WEBHOOK_URL", &webhook_url),
            ("SWITCHBOARD_PUSH_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("SWITCHBOARD_EVENT_WEBHOOK_URL", &event_url),
            ("SWITCHBOARD_EVENT_WEBHOOK_SECRETS", EVENT_WEBHOOK_SECRET),
        ],
    )
    .await;
    let mut test = Command::new("npm");
    test.current_dir(&dir)
        .args(["test", "--silent"])
        .env("SWITCHBOARD_URL", format!("http://{}", server.http))
        .env(
            "SWITCHBOARD_API_KEY",
            format!("{API_KEY_ID}:{API_KEY_SECRET}"),
        )
        .env("WEBHOOK_PORT", webhook_port.to_string())
        .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("EVENT_WEBHOOK_SECRET", EVENT_WEBHOOK_SECRET);
    let (passed, text) = tokio::task::spawn_blocking(move || {
        run_bounded(test, "sdk-node-test", Duration::from_secs(180))
    })
    .await
    .unwrap();
    println!("{text}");
    assert!(passed, "the SDK's tests failed:\n{text}");
    // node's runner reports its counts: every test ran, none was skipped.
    assert!(
        text.contains("# fail 0") && text.contains("# skipped 0"),
        "{text}"
    );
    assert!(!text.contains("# pass 0"), "{text}");
    drop(server);
}

/// `npm pack`'s tarball installs into a project of its own and imports,
/// with its types.
#[test]
fn the_sdk_package_installs_and_imports() {
    let dir = sdk_dir();
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let mut pack = Command::new("npm");
    pack.current_dir(&dir)
        .args(["pack", "--silent", "--pack-destination"])
        .arg(&scratch);
    let (packed, text) = run_bounded(pack, "sdk-pack", Duration::from_secs(180));
    assert!(packed, "npm pack failed:\n{text}");
    let tarball = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .expect("npm pack made a tarball");

    std::fs::write(
        scratch.join("package.json"),
        r#"{"name":"scratch","private":true,"type":"module"}"#,
    )
    .unwrap();
    let mut install = Command::new("npm");
    install
        .current_dir(&scratch)
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--loglevel=error",
        ])
        .arg(&tarball);
    let (installed, text) = run_bounded(install, "sdk-install", Duration::from_secs(180));
    assert!(installed, "installing the tarball failed:\n{text}");
    let types = scratch.join("node_modules/@switchboard/server-sdk/dist/index.d.ts");
    assert!(types.exists(), "the package ships no types");

    let script = r#"
        const sdk = await import("@switchboard/server-sdk");
        for (const name of ["Switchboard", "mintUserToken", "verifyWebhook", "SwitchboardError"]) {
            if (typeof sdk[name] !== "function") throw new Error(`missing export ${name}`);
        }
        const token = await sdk.mintUserToken({ id: "k", secret: "s".repeat(32) }, "alice");
        if (token.split(".").length !== 3) throw new Error("not a JWT");
        console.log("imported");
    "#;
    let mut import = Command::new("node");
    import
        .current_dir(&scratch)
        .args(["--input-type=module", "-e", script]);
    let (imported, text) = run_bounded(import, "sdk-import", Duration::from_secs(60));
    assert!(imported && text.contains("imported"), "{text}");
}
