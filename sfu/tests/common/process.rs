//! Running a tool the tests need (npm, node, Schemathesis) to its end,
//! bounded in time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `command` to its end or `limit` (then kills it and fails), its
/// output in a file under the test's tmp dir (a pipe could fill and stall
/// it); returns success and the output.
pub fn run_bounded(mut command: Command, what: &str, limit: Duration) -> (bool, String) {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{what}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = command
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish in {limit:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}
