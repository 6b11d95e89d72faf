//! Where a node is in its life: serving, draining (SIGTERM: finish the calls
//! it carries, take no new ones), or stopping (the drain is over: tell every
//! client and close). Shared by the call API, the events sockets and the
//! media server's signaling sessions; the process's signal handler moves it.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// `/readyz` fails, no new calls or rooms are placed here; live calls
    /// continue until they end or the drain deadline.
    Draining,
    /// Every client is told (`serverShutdown`) and its socket closed (1001).
    Stopping,
}

/// One per process. Phases only move forward.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    /// An operator asked for a drain (`POST /v1/nodes/{id}/drain`): the
    /// process drains as on SIGTERM.
    drain_asked: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: watch::Sender::new(Phase::Serving),
            drain_asked: watch::Sender::new(false),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Takes no new work from now on.
    pub fn is_serving(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Moves to `phase` unless the node is already there or past it.
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|current| {
            let moved = phase > *current;
            if moved {
                *current = phase;
            }
            moved
        });
    }

    /// Asks the process to drain (it does what SIGTERM does).
    pub fn ask_to_drain(&self) {
        self.drain_asked.send_replace(true);
    }

    /// Resolves once a drain was asked for.
    pub async fn drain_asked(&self) {
        let mut rx = self.drain_asked.subscribe();
        let _ = rx.wait_for(|asked| *asked).await;
    }

    /// Resolves once the node is stopping (at once if it already is).
    pub async fn stopping(&self) {
        let mut rx = self.phase.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|p| *p == Phase::Stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_stopping_wakes_waiters() {
        let life = std::sync::Arc::new(Lifecycle::default());
        assert!(life.is_serving());
        let waiter = tokio::spawn({
            let life = life.clone();
            async move { life.stopping().await }
        });
        life.advance(Phase::Draining);
        assert_eq!(life.phase(), Phase::Draining);
        life.advance(Phase::Serving);
        assert_eq!(life.phase(), Phase::Draining, "never back to serving");
        assert!(!waiter.is_finished());
        life.advance(Phase::Stopping);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .unwrap();
        // A late waiter returns at once.
        life.stopping().await;
    }
}
