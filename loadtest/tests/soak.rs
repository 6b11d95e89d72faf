//! Two minutes of `loadtest/bench/soak.sh` (the hour-long soak's CI run):
//! churn, call races with phones rung by push through the APNs/FCM
//! stand-ins, and TURN clients against the real server, sampled; every
//! gauge back to zero and the descriptors back at the end, RSS flat after
//! warm-up.

use std::path::Path;
use std::process::Command;

#[test]
fn two_minutes_of_churn_leave_nothing_behind() {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_switchboard-loadtest"));
    // The server binary of the same build (`cargo test --workspace` builds
    // it for the sfu package's tests).
    let server = loadtest.with_file_name("switchboard");
    assert!(server.exists(), "{} is not built", server.display());
    // `cargo test --workspace` builds the workspace's examples too.
    let standins = loadtest.with_file_name("examples").join("push_standins");
    assert!(standins.exists(), "{} is not built", standins.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/soak.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("120")
        .env("SWITCHBOARD", &server)
        .env("LOADTEST", loadtest)
        .env("PUSH_STANDINS", &standins)
        .env("SAMPLE_SECONDS", "30")
        .output()
        .expect("bash runs the soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the soak failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| end |"), "no final sample:\n{stdout}");
}
