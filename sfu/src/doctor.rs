//! `switchboard doctor`: checks a configuration and this host the way a
//! node would use them, before it does, and says per item what passes and
//! what fails and why. Nothing is changed: sockets are bound and released,
//! keys are loaded and sign, the providers' token endpoints and Redis are
//! asked; no push is sent (that is `push-test`).
//!
//! Run it where the node runs (the ports it checks are this host's), with
//! the node stopped: a running node holds them.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use crate::config::Config;

/// How long a provider's token endpoint or Redis may take to answer.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Works, but is probably not what production wants.
    Warn,
    Fail,
    /// Not configured: nothing to check.
    Skip,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// One checked item.
#[derive(Debug, Clone)]
pub struct Check {
    pub item: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn check(item: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        item,
        verdict,
        detail: detail.into(),
    }
}

/// Every check, in the order a node meets them at start. A config that
/// does not parse is the only item: nothing else can be read.
pub async fn run(path: Option<&str>) -> Vec<Check> {
    let config = match Config::read(path) {
        Ok(c) => c,
        Err(e) => return vec![check("config", Verdict::Fail, e.to_string())],
    };
    let source = path.map_or("embedded defaults".to_string(), |p| p.to_string());
    let mut checks = vec![match config.validate_settings() {
        Ok(()) => check(
            "config",
            Verdict::Pass,
            format!("{source} and SWITCHBOARD_* variables parse and are valid"),
        ),
        Err(e) => check("config", Verdict::Fail, e.to_string()),
    }];
    checks.push(secrets(&config));
    checks.push(apns(&config));
    checks.push(fcm(&config).await);
    checks.extend(turn(&config));
    checks.extend(announced_ips(&config));
    checks.push(bind_udp("media udp", config.rtc_udp_bind));
    checks.push(bind_tcp("http", config.http_listen));
    if let Some(metrics) = config.metrics_listen {
        checks.push(bind_tcp("metrics", metrics));
    }
    checks.push(store(&config).await);
    checks
}

/// Prints the checks as a table; true when none failed.
pub fn print(checks: &[Check]) -> bool {
    for c in checks {
        // A multi-line detail (a TOML error's excerpt) stays under its item.
        let detail = c.detail.trim_end().replace('\n', &format!("\n{:19}", ""));
        println!("{}  {:<12} {detail}", c.verdict.label(), c.item);
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed == 0 {
        println!("no failures");
    } else {
        println!("{failed} failed");
    }
    failed == 0
}

fn secrets(config: &Config) -> Check {
    if let Err(e) = config.validate_secrets() {
        return check("secrets", Verdict::Fail, e.to_string());
    }
    if config.call_token_secret.is_empty() && !config.dev_token_endpoint {
        return check(
            "secrets",
            Verdict::Warn,
            "call_token_secret is unset: a random one per process, so call tokens die with it \
             (set one of at least 32 bytes)",
        );
    }
    check(
        "secrets",
        Verdict::Pass,
        "every secret is at least 32 bytes",
    )
}

fn apns(config: &Config) -> Check {
    let Some(a) = &config.apns else {
        return check("apns", Verdict::Skip, "not configured ([apns])");
    };
    // Apple's key and team ids are 10 characters; anything else is
    // refused as InvalidProviderToken at the first push.
    let apple_id = |s: &str| s.len() == 10 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !apple_id(&a.key_id) || !apple_id(&a.team_id) {
        return check(
            "apns",
            Verdict::Fail,
            "key_id and team_id are Apple's 10-character ids (developer account, Keys)",
        );
    }
    let key = match std::fs::read(&a.key_file) {
        Ok(k) => k,
        Err(e) => {
            return check(
                "apns",
                Verdict::Fail,
                format!("key_file {}: {e}", a.key_file.display()),
            );
        }
    };
    match control::push::provider_token::ProviderToken::new(&key, &a.key_id, &a.team_id) {
        Ok(_) => check(
            "apns",
            Verdict::Pass,
            format!(
                "key {} of team {} loads and signs a provider token (ES256)",
                a.key_id, a.team_id
            ),
        ),
        Err(e) => check(
            "apns",
            Verdict::Fail,
            format!("key_file {}: {e}", a.key_file.display()),
        ),
    }
}

async fn fcm(config: &Config) -> Check {
    let Some(f) = &config.fcm else {
        return check("fcm", Verdict::Skip, "not configured ([fcm])");
    };
    // FCM's client alone: a broken APNs key is the apns item's failure.
    let fcm_only = Config {
        apns: None,
        push_webhook_url: None,
        ..config.clone()
    };
    let providers = match crate::server::push_providers(&fcm_only) {
        Ok(p) => p,
        Err(e) => return check("fcm", Verdict::Fail, e),
    };
    let Some(client) = providers.fcm else {
        return check("fcm", Verdict::Fail, "the FCM client was not built");
    };
    let file = f.service_account_file.display();
    match tokio::time::timeout(REMOTE_TIMEOUT, client.fetch_oauth_token()).await {
        Ok(Ok(())) => check(
            "fcm",
            Verdict::Pass,
            format!("service account {file} parses and its token endpoint issued a token"),
        ),
        // Refused (a revoked key, a clock far off) and unreachable both
        // end here: no FCM push would go out either way.
        Ok(Err(e)) => check(
            "fcm",
            Verdict::Fail,
            format!(
                "service account {file}: no OAuth token: {} (refused: a revoked key or \
                 this host's clock off; or the token endpoint is unreachable from here)",
                with_causes(&e)
            ),
        ),
        Err(_) => check(
            "fcm",
            Verdict::Fail,
            format!(
                "service account {file}: its token endpoint did not answer in {}s",
                REMOTE_TIMEOUT.as_secs()
            ),
        ),
    }
}

fn turn(config: &Config) -> Vec<Check> {
    let t = &config.turn;
    if !t.enabled {
        return vec![check(
            "turn",
            Verdict::Skip,
            "the relay is off ([turn] enabled)",
        )];
    }
    let mut checks = Vec::new();
    if let Some(addr) = t.udp_listen {
        checks.push(bind_udp("turn udp", addr));
    }
    if let Some(addr) = t.tcp_listen {
        checks.push(bind_tcp("turn tcp", addr));
    }
    if let (Some(cert), Some(key)) = (&t.tls_cert_file, &t.tls_key_file) {
        let loaded = std::fs::read(cert)
            .and_then(|c| Ok((c, std::fs::read(key)?)))
            .map_err(|e| e.to_string())
            .and_then(|(cert_chain_pem, key_pem)| {
                turn::server::tls_acceptor(&turn::server::TlsListen {
                    addr: t.tls_listen,
                    cert_chain_pem,
                    key_pem,
                })
                .map_err(|e| e.to_string())
            });
        checks.push(match loaded {
            Ok(_) => bind_tcp("turn tls", t.tls_listen),
            Err(e) => check(
                "turn tls",
                Verdict::Fail,
                format!("{} / {}: {e}", cert.display(), key.display()),
            ),
        });
    }
    if checks.is_empty() {
        checks.push(check(
            "turn",
            Verdict::Warn,
            "enabled, but no listener is set",
        ));
    }
    checks
}

/// Each announced IP must be this host's (the kernel lets us bind it), or
/// the public side of a 1:1 NAT the config says it is behind.
fn announced_ips(config: &Config) -> Vec<Check> {
    config
        .effective_announce_ips()
        .into_iter()
        .map(|ip| {
            let local = UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
            match (local, config.announce_behind_nat) {
                (true, _) if ip.is_loopback() => check(
                    "announced ip",
                    Verdict::Warn,
                    format!("{ip} is loopback: only this host can reach the media port"),
                ),
                (true, _) => check(
                    "announced ip",
                    Verdict::Pass,
                    format!("{ip} is an address of this host"),
                ),
                (false, true) => check(
                    "announced ip",
                    Verdict::Pass,
                    format!(
                        "{ip} is not this host's: behind 1:1 NAT (announce_behind_nat), \
                         which must forward UDP {} here",
                        config.rtc_udp_bind.port()
                    ),
                ),
                (false, false) => check(
                    "announced ip",
                    Verdict::Fail,
                    format!(
                        "{ip} is not an address of this host: clients would send media where \
                         nobody answers. Behind 1:1 NAT, set announce_behind_nat = true"
                    ),
                ),
            }
        })
        .collect()
}

fn bind_udp(item: &'static str, addr: SocketAddr) -> Check {
    match UdpSocket::bind(addr) {
        Ok(_) => check(item, Verdict::Pass, format!("UDP {addr} is free")),
        Err(e) => check(item, Verdict::Fail, bind_failure("UDP", addr, &e)),
    }
}

fn bind_tcp(item: &'static str, addr: SocketAddr) -> Check {
    match TcpListener::bind(addr) {
        Ok(_) => check(item, Verdict::Pass, format!("TCP {addr} is free")),
        Err(e) => check(item, Verdict::Fail, bind_failure("TCP", addr, &e)),
    }
}

fn bind_failure(protocol: &str, addr: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => " (in use: is a node already running here?)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        std::io::ErrorKind::AddrNotAvailable => " (not an address of this host)",
        _ => "",
    };
    format!("cannot bind {protocol} {addr}: {e}{hint}")
}

async fn store(config: &Config) -> Check {
    let Some(url) = config.redis_url.clone() else {
        return sqlite(config).await;
    };
    let config = config.clone();
    let reached = tokio::time::timeout(
        REMOTE_TIMEOUT,
        tokio::task::spawn_blocking(move || crate::server::redis_store(&config).map(drop)),
    )
    .await;
    // The URL may carry a password: name only the host part.
    let host = url.rsplit('@').next().unwrap_or_default().to_string();
    match reached {
        Ok(Ok(Ok(()))) => check("redis", Verdict::Pass, format!("{host} answers PING")),
        Ok(Ok(Err(e))) => check("redis", Verdict::Fail, format!("{host}: {e}")),
        Ok(Err(e)) => check("redis", Verdict::Fail, e.to_string()),
        Err(_) => check(
            "redis",
            Verdict::Fail,
            format!("{host}: no answer in {}s", REMOTE_TIMEOUT.as_secs()),
        ),
    }
}

/// The SQLite store opens, or its directory can be made where the node
/// would make it.
async fn sqlite(config: &Config) -> Check {
    let dir = config.data_dir.clone();
    if !dir.join("control.db").exists() {
        let Some(parent) = dir
            .ancestors()
            .find(|a| a.is_dir() || a.as_os_str().is_empty())
        else {
            return check(
                "store",
                Verdict::Fail,
                format!("{}: no parent", dir.display()),
            );
        };
        let parent = if parent.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            parent
        };
        let probe = parent.join(format!(".switchboard-doctor-{}", std::process::id()));
        return match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                check(
                    "store",
                    Verdict::Pass,
                    format!("no store yet; {} can be created", dir.display()),
                )
            }
            Err(e) => check(
                "store",
                Verdict::Fail,
                format!(
                    "{} cannot be created in {}: {e}",
                    dir.display(),
                    parent.display()
                ),
            ),
        };
    }
    let opened = tokio::task::spawn_blocking({
        let config = config.clone();
        move || crate::server::open_store(&config).map(drop)
    })
    .await;
    match opened {
        Ok(Ok(())) => check(
            "store",
            Verdict::Pass,
            format!("SQLite in {} opens", dir.display()),
        ),
        Ok(Err(e)) => check(
            "store",
            Verdict::Fail,
            format!("SQLite in {}: {e}", dir.display()),
        ),
        Err(e) => check("store", Verdict::Fail, e.to_string()),
    }
}

/// An error and what caused it, on one line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}
