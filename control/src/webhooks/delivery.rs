//! Delivers queued call events to the app backend's endpoints: at least
//! once, in per-call order, retrying 429 / 5xx / transport errors with
//! exponential backoff (honouring `Retry-After`), never blocking the API
//! (the API only writes rows; this task reads them). The queue is bounded:
//! events older than `max_age` and the oldest beyond `max_queued` are
//! dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use super::{Endpoint, body, sign};
use crate::call::UnixMillis;
use crate::store::{QueuedEvent, Store};

#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<Endpoint>,
    /// Events not delivered by then are dropped (counted).
    pub max_age: Duration,
    /// Rows kept at most; the oldest beyond are dropped (counted).
    pub max_queued: usize,
    /// The first retry's delay; doubled each attempt up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Settings {
    pub fn new(endpoints: Vec<Endpoint>) -> Settings {
        Settings {
            endpoints,
            max_age: Duration::from_secs(24 * 3600),
            max_queued: 100_000,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

pub struct Metrics {
    /// Attempts by outcome: delivered, retried, rejected (a final 4xx).
    pub attempts: IntCounterVec,
    /// Events given up on unsent, by why: `max_age`, `queue_full`.
    pub dropped: IntCounterVec,
    pub queued: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "switchboard_event_webhook_attempts_total",
                "Call-event webhook deliveries attempted, by outcome (delivered, retried, rejected)",
            ),
            &["outcome"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "switchboard_event_webhook_dropped_total",
                "Call events dropped undelivered, by reason (max_age, queue_full)",
            ),
            &["reason"],
        )?;
        let queued = IntGauge::new(
            "switchboard_event_webhook_queued",
            "Call-event deliveries waiting in the store's queue",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        Ok(Metrics {
            attempts,
            dropped,
            queued,
        })
    }
}

enum Outcome {
    Delivered,
    Retry(Option<Duration>),
    Rejected(u16),
}

/// How long before attempt `attempts + 1`.
fn backoff(settings: &Settings, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = settings
        .first_backoff
        .saturating_mul(1u32 << attempts.min(16))
        .min(settings.max_backoff);
    retry_after.map_or(doubled, |r| r.min(settings.max_backoff).max(doubled))
}

/// Runs until `stop` turns true; then one last pass delivers what is due.
pub async fn run(
    store: Arc<dyn Store>,
    settings: Settings,
    metrics: Option<Arc<Metrics>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "event webhooks: no HTTP client; events stay queued");
            return;
        }
    };
    loop {
        pass(&store, &settings, &http, metrics.as_deref()).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {
                pass(&store, &settings, &http, metrics.as_deref()).await;
                return;
            }
        }
    }
}

async fn pass(
    store: &Arc<dyn Store>,
    settings: &Settings,
    http: &reqwest::Client,
    metrics: Option<&Metrics>,
) {
    let now = crate::unix_millis();
    let store_ = store.clone();
    let max_age = settings.max_age.as_millis() as u64;
    let max_queued = settings.max_queued;
    let due = tokio::task::spawn_blocking(move || {
        let (aged, over) = store_.trim_events(now.saturating_sub(max_age), max_queued)?;
        let queued = store_.queued_events()?;
        Ok::<_, crate::store::StoreError>((aged, over, queued, store_.due_events(now, 64)?))
    })
    .await;
    let (aged, over, queued, due) = match due {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "event webhooks: the queue could not be read");
            return;
        }
        Err(_) => return,
    };
    if let Some(m) = metrics {
        m.dropped
            .with_label_values(&["max_age"])
            .inc_by(aged as u64);
        m.dropped
            .with_label_values(&["queue_full"])
            .inc_by(over as u64);
        m.queued.set(queued as i64);
    }
    if aged + over > 0 {
        tracing::warn!(aged, over, "event webhooks: undelivered events dropped");
    }
    // Each due row heads its own (endpoint, call): they go out together.
    let sends = due.into_iter().map(|queued| async move {
        let outcome = match settings
            .endpoints
            .iter()
            .find(|e| e.url == queued.event.endpoint)
        {
            Some(endpoint) => send(http, endpoint, &queued).await,
            // The endpoint was removed from the configuration.
            None => Outcome::Rejected(0),
        };
        (queued, outcome)
    });
    for (queued, outcome) in futures_util::future::join_all(sends).await {
        settle(store, settings, metrics, queued, outcome, now).await;
    }
}

async fn send(http: &reqwest::Client, endpoint: &Endpoint, queued: &QueuedEvent) -> Outcome {
    let body = body(queued);
    let timestamp = crate::unix_millis() / 1000;
    let id = &queued.event.event_id;
    let sent = http
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign(&endpoint.secrets, id, timestamp, &body),
        )
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Outcome::Delivered,
        Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
            Outcome::Retry(crate::push::retry_after(r.headers()))
        }
        Ok(r) => Outcome::Rejected(r.status().as_u16()),
        Err(_) => Outcome::Retry(None),
    }
}

async fn settle(
    store: &Arc<dyn Store>,
    settings: &Settings,
    metrics: Option<&Metrics>,
    queued: QueuedEvent,
    outcome: Outcome,
    now: UnixMillis,
) {
    let event = &queued.event;
    let label = match &outcome {
        Outcome::Delivered => "delivered",
        Outcome::Retry(_) => "retried",
        Outcome::Rejected(_) => "rejected",
    };
    if let Some(m) = metrics {
        m.attempts.with_label_values(&[label]).inc();
    }
    let store = store.clone();
    let row = queued.row;
    let written = match outcome {
        Outcome::Delivered => tokio::task::spawn_blocking(move || store.event_delivered(row)).await,
        Outcome::Rejected(status) => {
            // A 4xx is the receiver's final word: retrying cannot help.
            tracing::warn!(call_id = ?event.call_id, event_id = %event.event_id, kind = %event.kind, status, "event webhook refused; dropped");
            tokio::task::spawn_blocking(move || store.event_delivered(row)).await
        }
        Outcome::Retry(retry_after) => {
            let attempts = queued.attempts + 1;
            let wait = backoff(settings, queued.attempts, retry_after);
            tracing::info!(call_id = ?event.call_id, event_id = %event.event_id, kind = %event.kind, attempts, "event webhook not taken; retrying");
            let next = now + wait.as_millis() as u64;
            tokio::task::spawn_blocking(move || store.event_retry(row, attempts, next)).await
        }
    };
    if let Ok(Err(e)) = written {
        tracing::warn!(error = %e, "event webhooks: the queue could not be updated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_bound_and_honours_retry_after() {
        let s = Settings::new(Vec::new());
        assert_eq!(backoff(&s, 0, None), Duration::from_secs(1));
        assert_eq!(backoff(&s, 3, None), Duration::from_secs(8));
        assert_eq!(backoff(&s, 30, None), Duration::from_secs(300));
        assert_eq!(
            backoff(&s, 0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff(&s, 0, Some(Duration::from_secs(9999))),
            Duration::from_secs(300)
        );
    }
}
