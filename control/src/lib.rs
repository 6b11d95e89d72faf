//! The call-control plane. So far: call tokens (`call_token`). The call state
//! machine, device registry, push senders and the HTTP API come with their
//! issues; nothing here pretends to do them yet.

pub mod call_token;
