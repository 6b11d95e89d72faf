//! The push delivery loop: the ringer's [`PushSender`], in front of the
//! providers.
//!
//! `send` only queues, so the API never waits on a provider. Per push: one
//! delivery per (call, device, kind, ring epoch) however often the ringer
//! asks; a per-device rate limit on rings; the device's token resolved from the
//! registry (the VoIP token for iOS rings, the alert token for iOS cancels,
//! the FCM token on Android); then attempts, concurrently with every other
//! push. Transient failures are retried with exponential backoff and jitter,
//! honouring `Retry-After`, and a ring only while it still rings. A token
//! the provider calls dead is removed; no other answer touches the registry.
//!
//! Bounded against a provider that stalls for minutes: at most
//! `max_in_flight` deliveries run at once and `max_queued` pushes wait;
//! beyond that a push is dropped and counted (`failed{reason="queue_full"}`).
//! A ring that waited past its end is not sent (`ring_over`), a cancel older
//! than [`MAX_CANCEL_AGE`] neither (`stale`): rings expire rather than queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::apns::ApnsClient;
use super::fcm::FcmClient;
use super::metrics::PushMetrics;
use super::payload::PushPayload;
use super::webhook::WebhookClient;
use super::{Outcome, Outgoing, TokenKind, jitter_unit, unix_millis};
use crate::call::{CallState, RingState, UnixMillis};
use crate::device::{ApnsEnvironment, Device, Platform};
use crate::rate_limit::{Limiter, Rate};
use crate::ringing::{PushRequest, PushSender};
use crate::store::Store;

/// The providers this deployment uses. iOS goes to APNs when configured,
/// Android to FCM; a platform without its provider goes to the webhook.
#[derive(Default)]
pub struct Providers {
    pub apns: Option<ApnsClient>,
    pub fcm: Option<FcmClient>,
    pub webhook: Option<WebhookClient>,
}

#[derive(Clone)]
pub struct DispatchConfig {
    /// Attempts per push, the first included.
    pub max_attempts: u32,
    /// The first retry waits about this long; each later one twice as long.
    pub initial_backoff: Duration,
    /// Ring pushes per device; beyond it they are dropped (and counted).
    pub per_device: Rate,
    /// Deliveries under way at once (each holds a request to a provider).
    pub max_in_flight: usize,
    /// Pushes waiting for a delivery slot; beyond it new ones are dropped.
    pub max_queued: usize,
    /// Told `device.token_removed` when a provider kills a token, so the
    /// app backend can forget it too.
    pub event_webhooks: Vec<crate::webhooks::Endpoint>,
    /// De-duplication shared by the nodes of a cluster (two nodes may both
    /// fall back to pushing one unacknowledged ring); `None`: this node's
    /// own memory only.
    pub claims: Option<Arc<dyn PushClaims>>,
    /// The per-device ring limit's buckets, shared by the nodes of a
    /// cluster (a device's rings may be sent by any node); `None`: this
    /// node's own.
    pub shared_buckets: Option<Arc<dyn crate::rate_limit::SharedBuckets>>,
}

/// Claims on pushes, shared by every node: the first to claim a push's key
/// sends it.
pub trait PushClaims: Send + Sync {
    /// True if `key` was not claimed within `ttl` (it is now).
    fn claim(&self, key: &str, ttl: Duration) -> Result<bool, crate::store::StoreError>;
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            per_device: Rate::per_minute(30),
            max_in_flight: 1_000,
            max_queued: 10_000,
            event_webhooks: Vec::new(),
            claims: None,
            shared_buckets: None,
        }
    }
}

/// Where one push goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Apns,
    Fcm,
    Webhook,
}

impl Providers {
    /// Which provider pushes a device of `platform`, if any is configured.
    pub fn for_platform(&self, platform: Platform) -> Option<Provider> {
        match platform {
            Platform::Ios if self.apns.is_some() => Some(Provider::Apns),
            Platform::Android if self.fcm.is_some() => Some(Provider::Fcm),
            _ if self.webhook.is_some() => Some(Provider::Webhook),
            _ => None,
        }
    }

    /// One attempt through `provider`: its answer, never retried here.
    pub async fn send(&self, provider: Provider, push: &Outgoing) -> Outcome {
        let missing = Outcome::Rejected {
            reason: "not_configured".into(),
        };
        match provider {
            Provider::Apns => match &self.apns {
                Some(c) => c.send(push).await,
                None => missing,
            },
            Provider::Fcm => match &self.fcm {
                Some(c) => c.send(push).await,
                None => missing,
            },
            Provider::Webhook => match &self.webhook {
                Some(c) => c.send(push).await,
                None => missing,
            },
        }
    }
}

/// `switchboard push-test`: a ring for `device` flagged `test`, for no
/// call (a fresh callId), through the token a real ring would use. Never a
/// bare VoIP push: the client core reports it to CallKit / Telecom and ends
/// it at once. Err: why the device cannot be pushed (`web_device`,
/// `no_token`).
pub fn test_ring(device: &Device, now: UnixMillis) -> Result<Outgoing, &'static str> {
    /// Long enough for a phone that is briefly offline; the core ends it
    /// at once whenever it arrives.
    const TEST_RING_LIFETIME_MS: u64 = 30_000;
    let ring = PushRequest::Ring {
        call_id: uuid::Uuid::new_v4().to_string(),
        user_id: device.user_id.clone(),
        device_id: device.device_id.clone(),
        from_user_id: "switchboard-push-test".into(),
        call_type: crate::call::CallType::Audio,
        ring_epoch: now,
        expires_at: now + TEST_RING_LIFETIME_MS,
        caller_display: crate::call::CallerDisplay {
            display_name: Some("Switchboard push test".into()),
            avatar_url: None,
        },
    };
    let mut push = resolve(ring, device, now)?;
    if let PushPayload::IncomingCall { test, .. } = &mut push.payload {
        *test = true;
    }
    Ok(push)
}

impl Provider {
    pub fn label(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
            Provider::Webhook => "webhook",
        }
    }
}

struct Dispatch {
    providers: Providers,
    config: DispatchConfig,
    store: Arc<dyn Store>,
    metrics: Option<Arc<PushMetrics>>,
}

/// Sends pushes through the configured providers. `send` only queues.
pub struct PushDispatcher {
    queue: mpsc::Sender<Queued>,
    unsettled: Arc<AtomicUsize>,
    metrics: Option<Arc<PushMetrics>>,
}

/// A push on its way, from `send` until delivered or dropped.
struct Queued {
    push: PushRequest,
    queued_at: Instant,
    _settles: Unsettled,
}

/// Counts a push as unsettled while it lives (a draining node waits for
/// the count to reach zero).
struct Unsettled(Arc<AtomicUsize>);

impl Unsettled {
    fn new(count: &Arc<AtomicUsize>) -> Unsettled {
        count.fetch_add(1, Ordering::SeqCst);
        Unsettled(count.clone())
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cancel this old stops nothing: the phone's ring has ended by itself
/// (the ring push carries its deadline).
pub const MAX_CANCEL_AGE: Duration = Duration::from_secs(120);

/// (call, device, kind, ring epoch): one delivery each.
type DedupeKey = (String, String, &'static str, u64);
/// Dedupe entries are kept this long (rings last under a few minutes).
const DEDUPE_FOR: Duration = Duration::from_secs(3600);

impl PushDispatcher {
    /// Starts the delivery task on the current tokio runtime.
    pub fn spawn(
        providers: Providers,
        config: DispatchConfig,
        store: Arc<dyn Store>,
        metrics: Option<Arc<PushMetrics>>,
    ) -> PushDispatcher {
        let (queue, mut rx) = mpsc::channel::<Queued>(config.max_queued.max(1));
        let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let dispatch = Arc::new(Dispatch {
            providers,
            config,
            store,
            metrics: metrics.clone(),
        });
        tokio::spawn(async move {
            let mut seen: HashMap<DedupeKey, Instant> = HashMap::new();
            let mut pruned = Instant::now();
            let limiter = Arc::new(match dispatch.config.shared_buckets.clone() {
                Some(buckets) => Limiter::shared(dispatch.config.per_device, "push", buckets),
                None => Limiter::new(dispatch.config.per_device),
            });
            while let Some(queued) = rx.recv().await {
                // Wait for a slot here, so a stalled provider backs pushes up
                // into the bounded queue, not into unbounded tasks.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let now = Instant::now();
                let push = &queued.push;
                if matches!(push, PushRequest::Cancel { .. })
                    && now.duration_since(queued.queued_at) > MAX_CANCEL_AGE
                {
                    tracing::warn!(call_id = %call_of(push), "cancel push waited too long: dropped");
                    dispatch.count_failed("none", "unknown", "stale");
                    continue;
                }
                // Forget old entries once a minute (not per push: that would
                // be a scan per push once the map is large).
                if now.duration_since(pruned) >= Duration::from_secs(60) {
                    seen.retain(|_, at| now.duration_since(*at) < DEDUPE_FOR);
                    pruned = now;
                }
                let key = dedupe_key(push);
                if seen.insert(key, now).is_some() {
                    continue; // already delivered or on its way
                }
                let dispatch = dispatch.clone();
                let limiter = limiter.clone();
                let (user_id, device_id) = who(&queued.push);
                let span = crate::call_span!(
                    "push.send",
                    call_of(&queued.push),
                    user_id = %user_id,
                    device_id = %device_id,
                    platform = tracing::field::Empty,
                    provider = tracing::field::Empty,
                    kind = tracing::field::Empty,
                    attempts = tracing::field::Empty,
                    outcome = tracing::field::Empty,
                );
                // Concurrent: one slow push never holds up the others.
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let Queued {
                            push,
                            queued_at,
                            _settles,
                        } = queued;
                        // Claimed first: a push another node sends must not
                        // also take one of the device's tokens here.
                        if dispatch.claimed_elsewhere(&push).await
                            || !dispatch.within_device_limit(&push, limiter).await
                        {
                            return;
                        }
                        dispatch.deliver(push, queued_at).await;
                        drop(slot);
                    },
                    span,
                ));
            }
        });
        PushDispatcher {
            queue,
            unsettled: Arc::default(),
            metrics,
        }
    }
}

impl PushSender for PushDispatcher {
    fn send(&self, push: PushRequest) {
        let queued = Queued {
            push,
            queued_at: Instant::now(),
            _settles: Unsettled::new(&self.unsettled),
        };
        if let Err(mpsc::error::TrySendError::Full(queued)) = self.queue.try_send(queued) {
            let (user_id, device_id) = who(&queued.push);
            tracing::warn!(call_id = %call_of(&queued.push), user_id = %user_id, device_id = %device_id, "push queue full (providers stalled?): dropped");
            if let Some(m) = &self.metrics {
                m.failed
                    .with_label_values(&["none", "unknown", "queue_full"])
                    .inc();
            }
        }
    }

    fn unsettled(&self) -> usize {
        self.unsettled.load(Ordering::SeqCst)
    }
}

fn dedupe_key(push: &PushRequest) -> DedupeKey {
    match push {
        PushRequest::Ring {
            call_id,
            device_id,
            ring_epoch,
            ..
        } => (call_id.clone(), device_id.clone(), "ring", *ring_epoch),
        PushRequest::Cancel {
            call_id, device_id, ..
        } => (call_id.clone(), device_id.clone(), "cancel", 0),
    }
}

fn who(push: &PushRequest) -> (&str, &str) {
    match push {
        PushRequest::Ring {
            user_id, device_id, ..
        }
        | PushRequest::Cancel {
            user_id, device_id, ..
        } => (user_id, device_id),
    }
}

fn call_of(push: &PushRequest) -> &str {
    match push {
        PushRequest::Ring { call_id, .. } | PushRequest::Cancel { call_id, .. } => call_id,
    }
}

/// The push as this device's token and payload, or why there is none.
fn resolve(push: PushRequest, device: &Device, now: UnixMillis) -> Result<Outgoing, &'static str> {
    let (call_id, payload, expires_at, is_ring) = match push {
        PushRequest::Ring {
            call_id,
            from_user_id,
            call_type,
            ring_epoch,
            expires_at,
            caller_display,
            ..
        } => {
            let payload = PushPayload::incoming_call(
                &call_id,
                &from_user_id,
                call_type,
                ring_epoch,
                expires_at,
                caller_display,
                now,
            );
            (call_id, payload, Some(expires_at), true)
        }
        PushRequest::Cancel {
            call_id, reason, ..
        } => {
            let payload = PushPayload::CallCancelled {
                call_id: call_id.clone(),
                reason,
            };
            (call_id, payload, None, false)
        }
    };
    let (token_kind, token) = match (device.platform, is_ring) {
        (Platform::Ios, true) if device.capabilities.callkit => {
            (TokenKind::ApnsVoip, &device.push.apns_voip)
        }
        // Never VoIP for a cancel, nor for a device without CallKit (China,
        // or an app that opted out): iOS kills apps that get VoIP pushes
        // they do not report to CallKit. Those rings are visible alerts.
        (Platform::Ios, _) => (TokenKind::ApnsAlert, &device.push.apns_alert),
        (Platform::Android, _) => (TokenKind::Fcm, &device.push.fcm),
        (Platform::Web, _) => return Err("web_device"),
    };
    let token = token.clone().ok_or("no_token")?;
    Ok(Outgoing {
        call_id,
        user_id: device.user_id.clone(),
        device_id: device.device_id.clone(),
        platform: device.platform,
        token_kind,
        token,
        payload,
        expires_at,
        apns_environment: device
            .apns_environment
            .unwrap_or(ApnsEnvironment::Production),
        bundle_id: device.bundle_id.clone(),
    })
}

impl Dispatch {
    /// Whether another node already claimed this push (a cluster); a store
    /// that cannot answer lets it through: a duplicate ring is harmless
    /// (the ring epoch makes it one call on the phone), a missing one is not.
    async fn claimed_elsewhere(&self, push: &PushRequest) -> bool {
        let Some(claims) = self.config.claims.clone() else {
            return false;
        };
        let (call_id, device_id, kind, epoch) = dedupe_key(push);
        let key = format!("{call_id}\n{device_id}\n{kind}\n{epoch}");
        let claimed = tokio::task::spawn_blocking(move || claims.claim(&key, DEDUPE_FOR)).await;
        match claimed {
            Ok(Ok(first)) => !first,
            Ok(Err(e)) => {
                tracing::warn!(call_id = %call_id, device_id = %device_id, error = %e, "push claim unavailable: sending");
                false
            }
            Err(_) => false,
        }
    }

    /// Rings are what call spam multiplies; a cancel follows at most one
    /// ring, so limiting rings per device bounds both. A shared limiter is
    /// a store round trip: taken off the async threads.
    async fn within_device_limit(&self, push: &PushRequest, limiter: Arc<Limiter>) -> bool {
        if !matches!(push, PushRequest::Ring { .. }) {
            return true;
        }
        let (user_id, device_id) = who(push);
        let key = format!("{user_id}/{device_id}");
        let allowed = if limiter.is_shared() {
            tokio::task::spawn_blocking(move || limiter.check(&key, Instant::now()).is_ok())
                .await
                .unwrap_or(true)
        } else {
            limiter.check(&key, Instant::now()).is_ok()
        };
        if !allowed {
            tracing::warn!(call_id = %call_of(push), user_id = %user_id, device_id = %device_id, "ring push over this device's rate limit: dropped");
            self.count_failed("none", "unknown", "rate_limited");
        }
        allowed
    }

    /// Runs a store call off the async threads (SQLite blocks).
    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> Option<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store)).await.ok()
    }

    /// Whether this ring still rings this device (call not over, ring not
    /// stopped, deadline not passed).
    async fn ring_alive(&self, push: &Outgoing) -> bool {
        if push.expires_at.is_some_and(|at| unix_millis() >= at) {
            return false;
        }
        let (call_id, user_id, device_id) = (
            push.call_id.clone(),
            push.user_id.clone(),
            push.device_id.clone(),
        );
        self.store(move |s| {
            let Ok(Some(call)) = s.get_call(&call_id) else {
                return false;
            };
            call.value.state != CallState::Ended
                && call.value.participant(&user_id).is_some_and(|p| {
                    p.rings.iter().any(|r| {
                        r.device_id == device_id
                            && matches!(r.state, RingState::Sent | RingState::Acknowledged)
                    })
                })
        })
        .await
        .unwrap_or(false)
    }

    /// A push that ends unsent or refused: counted, and the reason is its
    /// span's outcome.
    fn count_failed(&self, provider: &str, platform: &str, reason: &str) {
        tracing::Span::current().record("outcome", reason);
        if let Some(m) = &self.metrics {
            m.failed
                .with_label_values(&[provider, platform, reason])
                .inc();
        }
    }

    async fn deliver(&self, push: PushRequest, queued_at: Instant) {
        let call_id = call_of(&push).to_string();
        let (user_id, device_id) = {
            let (u, d) = who(&push);
            (u.to_string(), d.to_string())
        };
        let lookup = (user_id.clone(), device_id.clone());
        let device = self
            .store(move |s| {
                s.devices_of(&lookup.0)
                    .ok()
                    .and_then(|ds| ds.into_iter().find(|d| d.device_id == lookup.1))
            })
            .await
            .flatten();
        let Some(device) = device else {
            tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, "push: device no longer registered");
            self.count_failed("none", "unknown", "no_device");
            return;
        };
        let platform = device.platform.as_str();
        let span = tracing::Span::current();
        span.record("platform", platform);
        let push = match resolve(push, &device, unix_millis()) {
            Ok(p) => p,
            Err(reason) => {
                tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, reason, "push: nothing to send to");
                self.count_failed("none", platform, reason);
                return;
            }
        };
        let Some(provider) = self.providers.for_platform(device.platform) else {
            tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, "push: no provider configured for this platform");
            self.count_failed("none", platform, "no_provider");
            return;
        };
        let kind = if push.is_ring() { "ring" } else { "cancel" };
        let label = provider.label();
        span.record("provider", label).record("kind", kind);
        let mut backoff = self.config.initial_backoff;
        for attempt in 1..=self.config.max_attempts {
            span.record("attempts", attempt);
            if push.is_ring() && !self.ring_alive(&push).await {
                tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, attempt, "ring over: push not sent");
                self.count_failed(label, platform, "ring_over");
                return;
            }
            if let Some(m) = &self.metrics {
                m.sent.with_label_values(&[label, platform, kind]).inc();
            }
            let wait = match self.providers.send(provider, &push).await {
                Outcome::Delivered => {
                    if let Some(m) = &self.metrics {
                        m.delivered
                            .with_label_values(&[label, platform, kind])
                            .inc();
                        m.latency
                            .with_label_values(&[label])
                            .observe(queued_at.elapsed().as_secs_f64());
                    }
                    span.record("outcome", "delivered");
                    tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, provider = label, kind, attempt, "push delivered");
                    return;
                }
                Outcome::TokenGone { reason } => {
                    let token = push.token.clone();
                    let removed_event = crate::webhooks::for_endpoints(
                        &self.config.event_webhooks,
                        None,
                        vec![crate::webhooks::CallEvent {
                            kind: "device.token_removed",
                            data: serde_json::json!({
                                "userId": user_id,
                                "deviceId": device_id,
                                "platform": platform,
                                "tokenKind": push.token_kind.as_str(),
                                "reason": reason,
                                "callId": call_id,
                            }),
                        }],
                        crate::unix_millis(),
                    );
                    let removed = self
                        .store(move |s| {
                            let removed = s.remove_push_token(&token)?;
                            if removed {
                                s.queue_events(&removed_event)?;
                            }
                            Ok::<_, crate::store::StoreError>(removed)
                        })
                        .await
                        .and_then(Result::ok)
                        .unwrap_or(false);
                    tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, provider = label, reason = %reason, removed, token_kind = push.token_kind.as_str(), "push token is dead: removed");
                    if let Some(m) = &self.metrics
                        && removed
                    {
                        m.tokens_removed.with_label_values(&[label]).inc();
                    }
                    self.count_failed(label, platform, &reason);
                    return;
                }
                Outcome::Rejected { reason } => {
                    tracing::warn!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, provider = label, reason = %reason, "push refused: a configuration or payload fault");
                    self.count_failed(label, platform, &reason);
                    return;
                }
                Outcome::Retry {
                    reason,
                    retry_after,
                } => {
                    if let Some(m) = &self.metrics {
                        m.retried.with_label_values(&[label, &reason]).inc();
                    }
                    retry_after.unwrap_or(backoff.mul_f64(0.8 + 0.4 * jitter_unit()))
                }
            };
            backoff *= 2;
            if attempt == self.config.max_attempts {
                break;
            }
            if push
                .expires_at
                .is_some_and(|at| unix_millis() + wait.as_millis() as u64 >= at)
            {
                tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, "ring ends before the retry: not retrying");
                self.count_failed(label, platform, "ring_over");
                return;
            }
            tokio::time::sleep(wait).await;
        }
        tracing::warn!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform, provider = label, "push failed after every attempt");
        self.count_failed(label, platform, "attempts_exhausted");
    }
}
