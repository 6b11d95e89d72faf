//! `switchboard push-test --user U --device D`: one test push to one
//! registered device through the configured provider, and the provider's
//! answer: the first step when a phone does not ring
//! (`deploy/runbooks/ios-not-ringing.md`).
//!
//! The push is a ring flagged `test` for no call, through the token a real
//! ring uses (VoIP on iOS, FCM on Android), so it proves the path calls
//! take. Never a bare VoIP push (iOS terminates an app that does not report
//! one to CallKit) nor an invisible high-priority FCM message: the client
//! core reports it to CallKit / Telecom and ends it at once
//! (`native::push::test_push_decision`). The registry is only read: a
//! token the provider calls dead is reported, not removed.

use control::push::Outcome;

use crate::config::Config;

/// What the provider answered, for the operator; `Ok` when it took the push.
pub async fn run(config: &Config, user: &str, device_id: &str) -> Result<String, String> {
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || crate::server::open_store(&config))
            .await
            .map_err(|e| e.to_string())??
    };
    let devices = {
        let user = user.to_string();
        tokio::task::spawn_blocking(move || store.devices_of(&user))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the store: {e}"))?
    };
    let device = devices
        .into_iter()
        .find(|d| d.device_id == device_id)
        .ok_or_else(|| format!("user {user} has no registered device {device_id}"))?;
    let platform = device.platform.as_str();
    let push =
        control::push::dispatch::test_ring(&device, control::unix_millis()).map_err(|reason| {
            match reason {
                "web_device" => format!(
                    "{device_id} is a web device: browsers ring over the events socket, not push"
                ),
                _ => format!(
                    "{platform} device {device_id} registered no token a ring goes to ({reason})"
                ),
            }
        })?;
    let providers = crate::server::push_providers(config)?;
    let provider = providers.for_platform(device.platform).ok_or_else(|| {
        format!("no push provider is configured for {platform} ([apns], [fcm] or push_webhook_url)")
    })?;
    let via = format!(
        "{} ({} token{})",
        provider.label(),
        push.token_kind.as_str(),
        match device.platform {
            control::device::Platform::Ios =>
                format!(", {:?} environment", push.apns_environment).to_lowercase(),
            _ => String::new(),
        }
    );
    match providers.send(provider, &push).await {
        Outcome::Delivered => Ok(format!(
            "{via} accepted the test push to {platform} device {device_id} of {user} \
             (test call {}). The phone shows \"Switchboard push test\" and ends it at once; \
             if it does not, the problem is on the phone (see the runbook)",
            push.call_id
        )),
        Outcome::TokenGone { reason } => Err(format!(
            "{via}: the token is dead ({reason}): the app must register again. \
             The server removes it at its next push"
        )),
        Outcome::Rejected { reason } => Err(format!(
            "{via} refused the push: {reason} (a configuration fault: key, topic or environment)"
        )),
        Outcome::Retry { reason, .. } => Err(format!(
            "{via} did not take the push now: {reason} (transient: try again)"
        )),
    }
}
