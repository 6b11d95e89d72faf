//! What the native tests share: an in-process `switchboard` with a known
//! API key, user tokens minted with it, and bounded waits.

#![allow(dead_code)] // each test binary uses its own part

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
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
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
