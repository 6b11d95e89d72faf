//! The packaging in `deploy/`, checked with the tools that run here:
//! - the systemd unit: `systemd-analyze verify` (any complaint fails) and
//!   `systemd-analyze security --offline` (exposure at most 2.0, "OK");
//! - the Kubernetes manifests: `kubernetes-validate --strict` against the
//!   Kubernetes schemas (offline, from PyPI), and the rules the schemas do
//!   not know (probes, grace period, host network, secrets not in the
//!   ConfigMap, a disruption budget over the pods);
//! - the compose file: the Compose specification's JSON schema
//!   (`check-jsonschema`), and its Prometheus config with `promtool`;
//! - the image: `deploy/Dockerfile`'s runtime stage built by podman (runc)
//!   on a base made here like distroless's (glibc, CA roots, the nonroot
//!   user; registries are unreachable), with this build's binary standing
//!   in for the build stage's; started, it runs as the nonroot user,
//!   answers `/healthz` and `/readyz`, carries a call between two Chromium
//!   pages (each decodes the other's video), and exits cleanly on SIGTERM.
//!   The build stage (Rust's image from Docker Hub) is not run here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::live::{API_KEY_ID, API_KEY_SECRET, free_port, request};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// Runs `program` (bounded: 5 minutes) and returns what it said.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("300")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn venv_tool(name: &str) -> String {
    let tool = repo().join("target/deploy-venv/bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: ./scripts/test installs deploy/requirements.txt into target/deploy-venv",
        tool.display()
    );
    tool.to_string_lossy().into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-packaging-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The unit with this build's binary in place of the installed path
/// (`verify` checks that the command exists).
fn unit_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let unit = std::fs::read_to_string(deploy().join("systemd/switchboard.service")).unwrap();
    let unit = unit.replace(
        "/usr/local/bin/switchboard",
        env!("CARGO_BIN_EXE_switchboard"),
    );
    let path = dir.join("switchboard.service");
    std::fs::write(&path, edit(unit)).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(deploy().join("systemd/switchboard.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "StateDirectory=switchboard",
        "ProtectSystem=strict",
        "LimitNOFILE=1048576",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "NoNewPrivileges=yes",
        "KillSignal=SIGTERM",
        // At least the default drain deadline (600 s).
        "TimeoutStopSec=660",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
    let dir = scratch("unit");
    // As shipped, and with the one capability TURN on port 443 needs.
    let port_443 = |u: String| {
        u.replace(
            "#CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        )
        .replace(
            "#AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        )
    };
    let variants: [(&str, &dyn Fn(String) -> String); 2] =
        [("as shipped", &|u| u), ("TURN on 443", &port_443)];
    for (variant, edit) in variants {
        let path = unit_copy(&dir, edit);
        let path = path.to_str().unwrap();
        let out = run("systemd-analyze", &["verify", path]);
        // verify exits 0 on settings it ignores: any word from it fails.
        assert!(
            out.status.success() && said(&out).trim().is_empty(),
            "{variant}: systemd-analyze verify:\n{}",
            said(&out)
        );
        let out = run(
            "systemd-analyze",
            &["security", "--offline=yes", "--threshold=20", path],
        );
        assert!(
            out.status.success(),
            "{variant}: exposure above 2.0:\n{}",
            said(&out)
        );
    }
    // The check is not blind: a setting systemd cannot read fails it.
    let broken = unit_copy(&dir, |u| {
        u.replace("ProtectSystem=strict", "ProtectSystem=mostly")
    });
    let out = run("systemd-analyze", &["verify", broken.to_str().unwrap()]);
    assert!(!said(&out).trim().is_empty(), "a bad value passed verify");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_kubernetes_manifests_validate_and_keep_the_rules() {
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let validate = venv_tool("kubernetes-validate");
    let mut args = vec!["--strict", "--quiet"];
    args.extend(&names);
    let out = run(&validate, &args);
    assert!(out.status.success(), "kubernetes-validate:\n{}", said(&out));

    // A field the schema does not have is refused (the check is not blind).
    let scratch = scratch("k8s");
    let broken = scratch.join("pdb.yaml");
    let pdb = std::fs::read_to_string(dir.join("pdb.yaml")).unwrap();
    std::fs::write(
        &broken,
        pdb.replace("maxUnavailable: 1", "maxUnavailable: 1\n  maxUnavalable: 1"),
    )
    .unwrap();
    let out = run(
        &validate,
        &["--strict", "--quiet", broken.to_str().unwrap()],
    );
    assert!(
        !out.status.success(),
        "a misspelt field passed:\n{}",
        said(&out)
    );
    let _ = std::fs::remove_dir_all(scratch);

    let docs: Vec<Value> = files.iter().flat_map(|f| yaml_documents(f)).collect();
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let config = &of_kind("ConfigMap")["data"];
    let drain: u64 = config["SWITCHBOARD_DRAIN_TIMEOUT_SECONDS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for key in config.as_object().unwrap().keys() {
        assert!(
            !(key.contains("SECRET") || key.contains("API_KEY") || key.contains("REDIS_URL")),
            "{key} belongs in the Secret"
        );
    }
    let secret = &of_kind("Secret")["stringData"];
    for key in [
        "SWITCHBOARD_API_KEY",
        "SWITCHBOARD_CALL_TOKEN_SECRET",
        "SWITCHBOARD_TURN_SECRET",
    ] {
        assert!(secret.get(key).is_some(), "the Secret lacks {key}");
    }
    let pod = &of_kind("DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "media needs the host's ports");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= drain, "grace {grace} s < drain {drain} s");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let server = &pod["containers"][0];
    assert_eq!(server["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        server["args"],
        json!(["--config", "/node/switchboard.toml"])
    );
    assert_eq!(
        server["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    // The init container writes the node's own settings the server reads.
    let init = pod["initContainers"][0]["command"].to_string();
    for key in ["announce_ips", "node_id", "public_url", "ExternalIP"] {
        assert!(init.contains(key), "the init container does not set {key}");
    }
    let labels = &of_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"];
    let budget = &of_kind("PodDisruptionBudget")["spec"];
    for (k, v) in budget["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the budget selects other pods");
    }
    assert_eq!(budget["maxUnavailable"], 1);
}

#[test]
fn the_compose_stack_follows_the_compose_spec() {
    let dir = deploy().join("compose");
    let compose = dir.join("docker-compose.yml");
    let out = run(
        &venv_tool("check-jsonschema"),
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            compose.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "compose spec:\n{}", said(&out));
    let file = &yaml_documents(&compose)[0];
    let services = &file["services"];
    for service in ["switchboard", "redis", "prometheus"] {
        assert!(services.get(service).is_some(), "no {service} service");
    }
    let switchboard = &services["switchboard"];
    assert_eq!(switchboard["build"]["dockerfile"], "deploy/Dockerfile");
    assert!(
        repo()
            .join(
                Path::new("deploy/compose").join(switchboard["build"]["context"].as_str().unwrap())
            )
            .join("deploy/Dockerfile")
            .exists(),
        "the build context is not the repository"
    );
    assert_eq!(
        switchboard["environment"]["SWITCHBOARD_REDIS_URL"],
        "redis://redis:6379/0"
    );
    let ports = switchboard["ports"].to_string();
    assert!(
        ports.contains("7882:7882/udp") && ports.contains("7880:7880/tcp"),
        "{ports}"
    );

    // Prometheus' config, with the rule file where this checkout has it.
    let scratch = scratch("compose");
    let config = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    let alerts = deploy().join("prometheus/alerts.yml");
    let config = config.replace("/etc/prometheus/alerts.yml", alerts.to_str().unwrap());
    let path = scratch.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let out = run("promtool", &["check", "config", path.to_str().unwrap()]);
    assert!(out.status.success(), "promtool:\n{}", said(&out));
    let _ = std::fs::remove_dir_all(scratch);
}

/// podman with runc, and rlimits no higher than this machine's (podman's
/// defaults raise them, which a sandbox refuses).
fn podman(args: &[&str]) -> Output {
    let mut all = vec!["--runtime", "runc"];
    all.extend(args);
    run("podman", &all)
}

const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// Removes what the image test made, whatever happened.
struct Cleanup {
    container: String,
    images: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("podman", &["rm", "--force", "--time", "5", &self.container]);
        for image in &self.images {
            let _ = run("podman", &["rmi", "--force", image]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A base like `gcr.io/distroless/cc-debian12:nonroot`, from this
/// machine's files: the C runtime the binary links (by `ldd`), the CA
/// roots, and the nonroot user and group (65532).
fn distroless_like_rootfs(root: &Path) {
    let binary = env!("CARGO_BIN_EXE_switchboard");
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    let mut files: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_string)
        .collect();
    assert!(
        files.iter().any(|f| f.contains("libc.so")),
        "ldd: {}",
        String::from_utf8_lossy(&ldd.stdout)
    );
    files.push("/etc/ssl/certs/ca-certificates.crt".into());
    for file in files {
        let to = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_nonroot_answers_health_and_carries_a_call() {
    let id = std::process::id();
    let base_image = format!("localhost/switchboard-test-base:{id}");
    let app_image = format!("localhost/switchboard-test:{id}");
    let work = scratch("image");
    let cleanup = Cleanup {
        container: format!("switchboard-test-{id}"),
        images: vec![app_image.clone(), base_image.clone()],
        dirs: vec![work.clone()],
    };

    let root = work.join("rootfs");
    distroless_like_rootfs(&root);
    let tar = work.join("base.tar");
    let out = run(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    assert!(out.status.success(), "tar: {}", said(&out));
    let out = podman(&["import", tar.to_str().unwrap(), &base_image]);
    assert!(out.status.success(), "podman import: {}", said(&out));

    // The build stage's output, from this build: /out/switchboard and the
    // empty data directory.
    let built = work.join("build");
    std::fs::create_dir_all(built.join("out/data")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_switchboard"),
        built.join("out/switchboard"),
    )
    .unwrap();
    let dockerfile = deploy().join("Dockerfile");
    let build_context = format!("build={}", built.display());
    let runtime_base = format!("RUNTIME_IMAGE={base_image}");
    let mut build = vec![
        "build",
        "--file",
        dockerfile.to_str().unwrap(),
        "--build-context",
        &build_context,
        "--build-arg",
        &runtime_base,
        "--tag",
        &app_image,
    ];
    build.extend(LIMITS);
    let context = work.join("context");
    std::fs::create_dir_all(&context).unwrap();
    build.push(context.to_str().unwrap());
    let out = podman(&build);
    assert!(out.status.success(), "podman build:\n{}", said(&out));

    // Started as an operator would, configured by its environment.
    let (http, udp) = (free_port(), free_port());
    let env = [
        format!("SWITCHBOARD_HTTP_LISTEN=127.0.0.1:{http}"),
        format!("SWITCHBOARD_RTC_UDP_BIND=127.0.0.1:{udp}"),
        "SWITCHBOARD_ANNOUNCE_IPS=127.0.0.1".into(),
        "SWITCHBOARD_TURN_UDP_LISTEN=127.0.0.1:0".into(),
        "SWITCHBOARD_TURN_TCP_LISTEN=127.0.0.1:0".into(),
        format!("SWITCHBOARD_API_KEY={API_KEY_ID}:{API_KEY_SECRET}"),
        format!(
            "SWITCHBOARD_CALL_TOKEN_SECRET={}",
            common::live::PROCESS_CALL_TOKEN_SECRET
        ),
        "SWITCHBOARD_TURN_SECRET=image-test-turn-secret-image-test-turn".into(),
    ];
    let mut start = vec![
        "run",
        "--detach",
        "--name",
        &cleanup.container,
        "--network",
        "host",
    ];
    start.extend(LIMITS);
    for e in &env {
        start.extend(["--env", e.as_str()]);
    }
    start.push(&app_image);
    let out = podman(&start);
    assert!(out.status.success(), "podman run:\n{}", said(&out));

    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let logs = || said(&run("podman", &["logs", &cleanup.container]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never listened:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in ["/healthz", "/readyz"] {
        let (status, body) = request(addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The server process is the nonroot user's.
    let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &cleanup.container]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("65532"),
        "runs as {uid}"
    );

    // A call through it: two Chromium pages (the demo page, signed in
    // with user tokens of the node's API key) ring, answer and decode
    // each other's video (`browser/run.mjs`, scenario `external-call`).
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "the call needs `npm ci` in {}: run ./scripts/test",
        browser_dir.display()
    );
    let call = Command::new("timeout")
        .args(["180", "node", "run.mjs", "-", "external-call"])
        .current_dir(&browser_dir)
        .env("SWITCHBOARD_BASE", format!("http://{addr}"))
        .env(
            "SWITCHBOARD_OPERATOR_KEY",
            format!("{API_KEY_ID}:{API_KEY_SECRET}"),
        )
        .output()
        .expect("node runs");
    assert!(
        call.status.success(),
        "the two-page call through the image failed:\n{}\nthe server's log:\n{}",
        said(&call),
        logs()
    );

    // SIGTERM drains and exits cleanly (no call is left).
    let out = podman(&["stop", "--time", "30", &cleanup.container]);
    assert!(out.status.success(), "podman stop: {}", said(&out));
    let code = podman(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &cleanup.container,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "exit after SIGTERM:\n{}",
        logs()
    );
    drop(cleanup);
}
