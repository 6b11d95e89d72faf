//! A TLS server speaking HTTP/2 only, as APNs and FCM do, with a test CA
//! (one per test process, fresh each run) that only the test's clients
//! trust. It counts TCP connections, so a test can assert that many pushes
//! shared one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsServer {
    pub url: String,
    /// The CA that signed the server's certificate (PEM): give it to the client.
    pub ca_pem: Vec<u8>,
    pub connections: Arc<AtomicUsize>,
}

impl TlsServer {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The test CA, shared by every stand-in of this process (so a server
/// configured with one extra root trusts them all).
pub fn test_ca() -> &'static CertifiedIssuer<'static, KeyPair> {
    static CA: OnceLock<CertifiedIssuer<'static, KeyPair>> = OnceLock::new();
    CA.get_or_init(|| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    })
}

/// Serves `app` on 127.0.0.1 over TLS with ALPN `h2` only; a connection
/// that did not negotiate h2 is closed.
pub async fn serve_h2(app: axum::Router) -> TlsServer {
    let ca = test_ca();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, ca)
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
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return; // HTTP/2 only, like APNs
                }
                let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                h2.max_concurrent_streams(1000);
                let _ = h2
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    TlsServer {
        url: format!("https://{addr}"),
        ca_pem: ca.pem().into_bytes(),
        connections,
    }
}
