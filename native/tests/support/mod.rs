//! What the native tests share: an in-process `switchboard` with a known
//! API key, user tokens minted with it, and bounded waits.

#![allow(dead_code)] // each test binary uses its own part

pub mod fake_phone;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY_ID: &str = "native-test-key";
const KEY_SECRET: &str = "native-test-key-secret-native-test";

fn key() -> control::auth::ApiKey {
    control::auth::ApiKey {
        id: KEY_ID.into(),
        secret: KEY_SECRET.into(),
        revoked: false,
    }
}

/// The operator API's key (`/v1/flags`): id and secret, for Basic auth.
pub fn operator_key() -> (&'static str, &'static str) {
    (KEY_ID, KEY_SECRET)
}

/// A user token as the app's backend would issue it.
pub fn token(user: &str) -> String {
    token_for(user, Duration::from_secs(600))
}

/// A user token that expires `lifetime` from now.
pub fn token_for(user: &str, lifetime: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    control::auth::mint_user_token(&key(), user, lifetime, now)
}

/// A user token that expired an hour ago (a phone woken from a push after
/// a day in a drawer).
pub fn expired_token(user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    control::auth::mint_user_token(&key(), user, Duration::from_secs(600), now - 4200)
}

pub struct TestServer {
    pub server: sfu::server::Running,
    pub base: String,
    dir: std::path::PathBuf,
}

/// A switchboard on loopback with its own data directory (`name` keeps
/// test binaries apart).
pub async fn start_server(name: &str) -> TestServer {
    let dir = std::env::temp_dir().join(format!("native-{name}-{}", std::process::id()));
    let config = sfu::config::Config {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        rtc_udp_bind: "127.0.0.1:0".parse().unwrap(),
        announce_ips: vec!["127.0.0.1".parse().unwrap()],
        engine_threads: 1,
        data_dir: dir.clone(),
        api_keys: vec![key()],
        turn: sfu::config::TurnSettings {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = sfu::server::start(config).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    TestServer { server, base, dir }
}

impl TestServer {
    pub async fn stop(self) {
        self.server.shutdown().await;
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

/// The runtime a test's server and clients run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `check` every 20 ms until it returns something or `limit` passes.
pub fn wait_for<T>(what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, limit, check, String::new)
}

/// [`wait_for`], and on timeout the failure also says what `explain`
/// finds (the state that was waited on), so a rare hang can be traced.
pub fn wait_for_explained<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}: {}", explain());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TLS terminator on 127.0.0.1 in front of `backend` (as a load balancer
/// would be in production), with a certificate from a fresh test CA that
/// only the test's clients trust. Returns the `https://` base URL and the
/// CA's PEM.
pub async fn tls_front(backend: std::net::SocketAddr) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    // HTTP/1.1: WebSocket upgrades (RFC 6455) need it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (format!("https://{addr}"), ca.pem())
}

/// A proxy in front of `backend` standing in for a newer server: plain
/// HTTP passes through untouched; on the device's WebSockets (`/v1/rtc`,
/// `/v1/events`) it relays every frame and sends the device messages this
/// build has never heard of (a new message type, an unknown enum value,
/// unknown fields): one at once (before the server's `joined` or
/// `authenticated`), then one every 100 ms for the life of the socket. Returns the `http://` base URL and how many
/// messages it made up.
pub async fn newer_server_front(
    backend: std::net::SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_tungstenite::tungstenite::Message;

    let injected = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = injected.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                let n = tcp.peek(&mut head).await.unwrap_or(0);
                let path = match &head[..n] {
                    h if h.starts_with(b"GET /v1/rtc") => "/v1/rtc",
                    h if h.starts_with(b"GET /v1/events") => "/v1/events",
                    _ => {
                        let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                        return;
                    }
                };
                let Ok(device) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let url = format!("ws://{backend}{path}");
                let Ok((server, _)) = tokio_tungstenite::connect_async(url).await else {
                    return;
                };
                let (mut to_device, mut from_device) = device.split();
                let (mut to_server, mut from_server) = server.split();
                let upstream = async move {
                    while let Some(Ok(message)) = from_device.next().await {
                        if to_server.send(message).await.is_err() {
                            return;
                        }
                    }
                };
                let downstream = async move {
                    let made_up = [
                        r#"{"type":"somethingNew","callId":"x","detail":{"nested":[1,2]}}"#,
                        r#"{"type":"participantStateChanged","participantId":"PA_nobody","state":"teleporting"}"#,
                        r#"{"type":"pong","timestamp":1,"serverRegion":"eu-west"}"#,
                    ];
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    let mut next = 0usize;
                    loop {
                        tokio::select! {
                            message = from_server.next() => {
                                let Some(Ok(message)) = message else { return };
                                if to_device.send(message).await.is_err() {
                                    return;
                                }
                            }
                            _ = tick.tick() => {
                                let text = made_up[next % made_up.len()];
                                next += 1;
                                if to_device.send(Message::text(text)).await.is_err() {
                                    return;
                                }
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = upstream => {}
                    _ = downstream => {}
                }
            });
        }
    });
    (format!("http://{addr}"), injected)
}

/// A node the call's room is not on, as clients meet it: the call API
/// passes through to `backend`, but every `/v1/rtc` join is answered
/// `wrong_node` naming `backend`'s signaling. Returns its base URL and how
/// many joins it sent on.
pub async fn wrong_node_front(
    backend: std::net::SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let redirected = Arc::new(AtomicUsize::new(0));
    let count = redirected.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                let n = tcp.peek(&mut head).await.unwrap_or(0);
                if !head[..n].starts_with(b"GET /v1/rtc") {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                    return;
                }
                let Ok(mut device) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = device.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    if !text.contains(r#""type":"join""#) {
                        continue;
                    }
                    let answer = serde_json::json!({
                        "type": "error",
                        "code": "wrong_node",
                        "message": "the call's room is on another node",
                        "rtcUrl": format!("ws://{backend}/v1/rtc"),
                    });
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = device.send(Message::text(answer.to_string())).await;
                }
            });
        }
    });
    (format!("http://{addr}"), redirected)
}
