//! TLS for everything the core opens (`https://` to the call API, `wss://`
//! for the events and media signaling sockets): rustls with the platform's
//! verifier (the system trust store and its revocation and policy checks,
//! as the phone's own apps get), plus any private CA the app was configured
//! with (a self-hosted server behind an internal CA; the tests' CA).
//!
//! Android: `rustls-platform-verifier` calls into the JVM, so the adapter
//! initialises it once before the first `Client` (see the crate's Android
//! notes: `rustls_platform_verifier::android::init_hosted` with the app's
//! `Context`, and its Maven artifact in the Gradle build). Not run here: no
//! Android SDK is reachable; the verifier is exercised on Linux.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A client configuration trusting the platform's roots and `extra_ca_pem`
/// (PEM certificates), shared by the HTTP client and both sockets.
pub fn client_config(extra_ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let extra: Vec<CertificateDer<'static>> = match extra_ca_pem {
        Some(pem) => {
            let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("trusted CA: {e}"))?;
            if certificates.is_empty() {
                return Err("trusted CA: no PEM certificate in it".into());
            }
            certificates
        }
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("TLS verifier: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous() // a verifier of our choice, not "no verification"
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}
