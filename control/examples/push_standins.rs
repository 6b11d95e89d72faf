//! The APNs and FCM stand-ins of the push tests as one process, for load
//! runs that need a server pushing phones (the soak): they check what Apple
//! and Google check and accept every well-formed push.
//!
//!   cargo run -p control --example push_standins -- <dir>
//!
//! Writes into `<dir>` the APNs key, the FCM service account, the test CA
//! and `push.toml`, the server config lines that point a `switchboard` at
//! the stand-ins (top-level keys first, so a caller can append its own
//! tables), then `ready`. Every 5 s `accepted` holds how many pushes each
//! stand-in accepted (`apns N` / `fcm N`). Runs until killed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::{apns, fcm};

#[tokio::main]
async fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: push_standins <dir>");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    let apns = apns::FakeApns::start().await;
    let fcm = fcm::FakeFcm::start().await;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        dir.join(name).display().to_string()
    };
    let key = write("AuthKey.p8", &apns.key_pem);
    let account = write("service-account.json", fcm.service_account_json.as_bytes());
    let ca = write("test-ca.pem", &apns.server.ca_pem);
    let config = format!(
        "push_extra_root_cert = {ca:?}\n\n\
         [apns]\nkey_file = {key:?}\nkey_id = {:?}\nteam_id = {:?}\nbundle_id = {:?}\n\
         production_url = {:?}\nsandbox_url = {:?}\n\n\
         [fcm]\nservice_account_file = {account:?}\nurl = {:?}\n\n",
        apns::KEY_ID,
        apns::TEAM_ID,
        apns::BUNDLE_ID,
        apns.server.url,
        apns.server.url,
        fcm.server.url,
    );
    write("push.toml", config.as_bytes());
    write("ready", b"");
    loop {
        let counts = format!(
            "apns {}\nfcm {}\n",
            apns.state.accepted.lock().unwrap().len(),
            fcm.state.accepted.lock().unwrap().len()
        );
        write("accepted", counts.as_bytes());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
