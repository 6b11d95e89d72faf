//! The device's user token, kept fresh through the `Credentials` port: the
//! app's backend issues user tokens (at most 24 h long), so the core asks
//! the app for a new one when the server answers 401 (a cold start from a
//! push with yesterday's token) and before the events socket's token
//! expires. One request to the app at a time, however many requests were
//! refused meanwhile; the app answers on any thread
//! (`Client::set_user_token` / `Client::user_token_failed`).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ports::Credentials;

/// How long a refused request waits for the app's answer; past it, it
/// fails as refused (and a later refusal asks the app again).
pub const REFRESH_WAIT: Duration = Duration::from_secs(20);

/// Refresh ahead of expiry by this much (or by half the token's remaining
/// life, when shorter: a short-lived token is not refreshed in a loop).
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// When to refresh a token that expires `remaining` from now.
pub fn refresh_in(remaining: Duration) -> Duration {
    remaining.saturating_sub(REFRESH_AHEAD.min(remaining / 2))
}

pub struct UserToken {
    current: RwLock<String>,
    /// `None` once the client shut down: the app's object is released
    /// then, on the driver (a foreign runtime may exit right after).
    port: Mutex<Option<Arc<dyn Credentials>>>,
    /// Bumped at each answer from the app (a token or a failure).
    answers: watch::Sender<u64>,
    /// When the app was last asked and has not answered yet.
    asked_at: Mutex<Option<Instant>>,
}

impl UserToken {
    pub fn new(token: String, port: Arc<dyn Credentials>) -> Arc<UserToken> {
        Arc::new(UserToken {
            current: RwLock::new(token),
            port: Mutex::new(Some(port)),
            answers: watch::Sender::new(0),
            asked_at: Mutex::new(None),
        })
    }

    pub fn get(&self) -> String {
        self.current
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The app's answer, or a token it set on its own (a new sign-in).
    pub fn set(&self, token: String) {
        match self.current.write() {
            Ok(mut current) => *current = token,
            Err(e) => *e.into_inner() = token,
        }
        self.answered();
    }

    /// The app could not get a token (signed out, offline): requests
    /// waiting for one fail now.
    pub fn failed(&self, detail: &str) {
        tracing::warn!(%detail, "the app has no fresh user token");
        self.answered();
    }

    fn answered(&self) {
        *self.asked_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.answers.send_modify(|n| *n += 1);
    }

    /// Changes whenever the app answered (a new token, or none).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.answers.subscribe()
    }

    /// Asks the app for a fresh token unless a request is out already.
    pub fn ask(&self) {
        {
            let mut asked_at = self.asked_at.lock().unwrap_or_else(|e| e.into_inner());
            if asked_at.is_some_and(|at| at.elapsed() < REFRESH_WAIT) {
                return;
            }
            *asked_at = Some(Instant::now());
        }
        let port = self.port.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let asked = match port {
            Some(port) => {
                tracing::info!("asking the app for a fresh user token");
                port.refresh_user_token()
            }
            None => Err("the client was shut down".to_string().into()),
        };
        if let Err(e) = asked {
            tracing::warn!(error = %e, "credentials port failed");
            self.failed("no answer from the app");
        }
    }

    /// Releases the app's object (at shutdown): tasks still holding this
    /// token can no longer reach the app.
    pub fn detach(&self) {
        self.port.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A token other than `stale` (the one the server refused): the current
    /// one if another request refreshed it meanwhile, else the app's
    /// answer. `None` when the app has none or did not answer in time.
    pub async fn refresh(&self, stale: &str) -> Option<String> {
        let mut answers = self.answers.subscribe();
        let current = self.get();
        if current != stale {
            return Some(current);
        }
        self.ask();
        match tokio::time::timeout(REFRESH_WAIT, answers.changed()).await {
            Ok(Ok(())) => Some(self.get()).filter(|t| t != stale),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An app that counts how often it was asked and answers nothing by
    /// itself (the test answers for it).
    #[derive(Default)]
    struct App {
        asked: AtomicUsize,
    }

    impl Credentials for App {
        fn refresh_user_token(&self) -> Result<(), PortError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn requests_refused_together_ask_the_app_once_and_all_get_its_token() {
        let app = Arc::new(App::default());
        let token = UserToken::new("old".into(), app.clone());
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let token = token.clone();
                tokio::spawn(async move { token.refresh("old").await })
            })
            .collect();
        // Let all three ask before the app answers.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        token.set("new".into());
        for waiter in waiting {
            assert_eq!(waiter.await.unwrap(), Some("new".into()));
        }
        assert_eq!(app.asked.load(Ordering::SeqCst), 1);
        // Refused for a token replaced meanwhile: the current one, no asking.
        assert_eq!(token.refresh("old").await, Some("new".into()));
        assert_eq!(app.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_app_without_a_token_fails_the_waiting_request() {
        let app = Arc::new(App::default());
        let token = UserToken::new("old".into(), app.clone());
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move { token.refresh("old").await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        token.failed("signed out");
        assert_eq!(waiter.await.unwrap(), None);
        // The next refusal asks again.
        let again = {
            let token = token.clone();
            tokio::spawn(async move { token.refresh("old").await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(app.asked.load(Ordering::SeqCst), 2);
        token.set("new".into());
        assert_eq!(again.await.unwrap(), Some("new".into()));
    }

    #[test]
    fn tokens_are_refreshed_ahead_of_expiry_never_in_a_loop() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(refresh_in(day), day - REFRESH_AHEAD);
        // A 30 s token: at half its life, not at once.
        assert_eq!(refresh_in(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(refresh_in(Duration::ZERO), Duration::ZERO);
    }
}
