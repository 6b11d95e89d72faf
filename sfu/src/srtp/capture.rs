//! Catching a connection's DTLS-SRTP keying material on its way to str0m.
//!
//! str0m takes its DTLS from the crypto provider it is built with
//! (`RtcConfig::set_crypto_provider`). [`provider`] returns a copy of a
//! provider whose DTLS instances are wrapped: when the handshake exports
//! the keying material (`DtlsOutput::KeyingMaterial`), the wrapper hands
//! str0m the output unchanged and keeps a copy, with the profile and the
//! instance's role, in the [`KeySlot`] that was bound when the instance was
//! made. `RtcConfig::build` makes a connection's one DTLS instance there
//! and then, on the calling thread, so [`bind`] around it ties the keys to
//! that connection. Instances made with nothing bound report nowhere.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use str0m::config::CryptoProvider;
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};

/// What a connection's DTLS handshake exported.
#[derive(Clone, PartialEq, Eq)]
pub struct Captured {
    /// RFC 5764 section 4.2 keying material ([`super::keys`] derives from it).
    pub material: Vec<u8>,
    pub profile: SrtpProfile,
    /// This side was the DTLS client (str0m: active).
    pub dtls_client: bool,
}

impl std::fmt::Debug for Captured {
    // The material never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("profile", &self.profile)
            .field("dtls_client", &self.dtls_client)
            .finish_non_exhaustive()
    }
}

/// Where one connection's keys land once its handshake completes.
#[derive(Debug, Clone, Default)]
pub struct KeySlot(Arc<Mutex<Option<Captured>>>);

impl KeySlot {
    /// The keys, once captured (a DTLS renegotiation replaces them).
    pub fn get(&self) -> Option<Captured> {
        self.0.lock().ok()?.clone()
    }

    fn set(&self, captured: Captured) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(captured);
        }
    }
}

thread_local! {
    /// The slot a DTLS instance made now on this thread reports to.
    static BOUND: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Runs `build` with `slot` bound: the DTLS instances it makes on this
/// thread report their keys there.
pub fn bind<T>(slot: &KeySlot, build: impl FnOnce() -> T) -> T {
    let previous = BOUND.with(|b| b.replace(Some(slot.clone())));
    let built = build();
    BOUND.with(|b| *b.borrow_mut() = previous);
    built
}

/// `inner` with its DTLS instances wrapped to capture their keys.
pub fn provider(inner: CryptoProvider) -> CryptoProvider {
    // str0m holds providers as `&'static`: one wrapper per inner provider
    // for the process (the engine has one).
    static WRAPPERS: OnceLock<Mutex<Vec<&'static Capturing>>> = OnceLock::new();
    let wrappers = WRAPPERS.get_or_init(Default::default);
    let mut wrappers = wrappers.lock().unwrap_or_else(|e| e.into_inner());
    let same = |w: &&&'static Capturing| std::ptr::addr_eq(w.inner, inner.dtls_provider);
    let wrapper = match wrappers.iter().find(same) {
        Some(wrapper) => *wrapper,
        None => {
            let wrapper: &'static Capturing = Box::leak(Box::new(Capturing {
                inner: inner.dtls_provider,
            }));
            wrappers.push(wrapper);
            wrapper
        }
    };
    CryptoProvider {
        dtls_provider: wrapper,
        ..inner
    }
}

#[derive(Debug)]
struct Capturing {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for Capturing {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        match BOUND.with(|b| b.borrow().clone()) {
            Some(slot) => Ok(Box::new(CapturingInstance { inner, slot })),
            None => Ok(inner),
        }
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

struct CapturingInstance {
    inner: Box<dyn DtlsInstance>,
    slot: KeySlot,
}

impl std::fmt::Debug for CapturingInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturingInstance").finish_non_exhaustive()
    }
}

impl DtlsInstance for CapturingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &output {
            self.slot.set(Captured {
                material: material.to_vec(),
                profile: *profile,
                dtls_client: self.inner.is_active(),
            });
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::keys::connection_keys;

    /// Two DTLS instances made through the wrapper, one bound to a slot
    /// each, shake hands: both slots hold the same material and profile,
    /// opposite roles, and what one side derives to send is what the other
    /// derives to receive. An instance made with nothing bound reports
    /// nowhere (and is str0m's own, unwrapped).
    #[test]
    fn a_handshake_leaves_both_sides_keys_in_their_slots() {
        let crypto = provider(str0m::crypto::from_feature_flags());
        let dtls = crypto.dtls_provider;
        let now = Instant::now();
        let make = |slot: &KeySlot, active: bool| {
            let cert = dtls.generate_certificate().expect("a certificate");
            let mut instance = bind(slot, || {
                dtls.new_dtls(&cert, now, DtlsVersion::Dtls12, None)
                    .expect("a DTLS instance")
            });
            instance.set_active(active);
            instance
        };
        let (client_slot, server_slot) = (KeySlot::default(), KeySlot::default());
        let mut client = make(&client_slot, true);
        let mut server = make(&server_slot, false);
        let mut buf = vec![0u8; 2048];
        for round in 0..50 {
            let _ = client.handle_timeout(now + std::time::Duration::from_millis(round));
            let _ = server.handle_timeout(now + std::time::Duration::from_millis(round));
            for client_sends in [true, false] {
                let (from, to) = if client_sends {
                    (&mut client, &mut server)
                } else {
                    (&mut server, &mut client)
                };
                let mut packets = Vec::new();
                for _ in 0..100 {
                    match from.poll_output(&mut buf) {
                        DtlsOutput::Packet(p) => packets.push(p.to_vec()),
                        DtlsOutput::Timeout(_) => break,
                        _ => {}
                    }
                }
                for p in packets {
                    let _ = to.handle_packet(&p);
                }
            }
            if client_slot.get().is_some() && server_slot.get().is_some() {
                break;
            }
        }
        let (client_keys, server_keys) = (client_slot.get().unwrap(), server_slot.get().unwrap());
        assert_eq!(client_keys.material, server_keys.material);
        assert_eq!(client_keys.profile, server_keys.profile);
        assert!(client_keys.dtls_client && !server_keys.dtls_client);
        let aes = crypto.srtp_provider;
        let derive = |c: &Captured| {
            connection_keys(aes, c.profile, &c.material, c.dtls_client).expect("keys")
        };
        let (client_session, server_session) = (derive(&client_keys), derive(&server_keys));
        assert_eq!(client_session.transmit, server_session.receive);
        assert_eq!(server_session.transmit, client_session.receive);
        assert_ne!(client_session.transmit, client_session.receive);

        let unbound = dtls.generate_certificate().unwrap();
        let plain = dtls
            .new_dtls(&unbound, now, DtlsVersion::Dtls12, None)
            .unwrap();
        assert!(format!("{plain:?}").find("CapturingInstance").is_none());
    }
}
