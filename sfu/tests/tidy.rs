//! Project rules checked as tests (rust-analyzer's tidy): the engine stays
//! sans-IO, every crate says what it owns, no dumping-ground modules.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with("node_modules") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sans_io_cores_touch_no_socket_clock_thread_or_lock() {
    let mut files = Vec::new();
    rust_files(&root().join("sfu/src/engine"), &mut files);
    rust_files(&root().join("control/src/call"), &mut files);
    for core in ["relay", "peers", "credentials", "framing"] {
        files.push(root().join(format!("turn/src/{core}.rs")));
    }
    files.push(root().join("native/src/call_engine.rs"));
    assert!(files.len() > 10);
    let forbidden = [
        "tokio",
        "UdpSocket",
        "TcpStream",
        "Instant::now",
        "SystemTime::now",
        "std::thread",
        "Mutex",
        "RwLock",
        "spawn(",
    ];
    // A core's own `#[cfg(test)] mod tests` (tests.rs) may read the clock
    // once for a starting point; the core never does.
    files.retain(|f| !f.ends_with("tests.rs"));
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} uses {word}: the engine is sans-IO",
                file.display()
            );
        }
    }
}

/// The workspace's Rust crates, one per top-level folder.
const RUST_CRATES: [&str; 7] = [
    "signaling",
    "control",
    "turn",
    "sfu",
    "native",
    "loadtest",
    "fuzz",
];

#[test]
fn every_crate_has_a_readme() {
    for krate in RUST_CRATES.iter().chain(&["deploy"]) {
        assert!(
            root().join(krate).join("README.md").exists(),
            "{krate}/README.md is missing"
        );
    }
    assert!(root().join("ARCHITECTURE.md").exists());
}

#[test]
fn no_utils_modules_and_no_ignored_or_should_panic_tests() {
    let mut files = Vec::new();
    for krate in RUST_CRATES {
        rust_files(&root().join(krate), &mut files);
    }
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !matches!(name.as_str(), "utils.rs" | "util.rs" | "helpers.rs"),
            "{}",
            file.display()
        );
        if file.ends_with("tidy.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for word in ["#[ignore", "#[should_panic"] {
            assert!(
                !text.contains(word),
                "{} has {word}: assert the Err instead",
                file.display()
            );
        }
    }
}
