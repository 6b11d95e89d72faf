//! Push delivery (issue #4, in progress). Built so far: the standard payload
//! (`payload`) and the signed webhook sender (`webhook`) for apps that send
//! APNs / FCM from their own backend. The APNs and FCM clients are not built
//! yet; nothing here pretends to be them.

pub mod payload;
pub mod webhook;
