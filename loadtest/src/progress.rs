//! Live progress while a run goes: bots up, packets per second, loss so
//! far. Bots report into shared counters; a ticker prints them (indicatif).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Default)]
pub struct Progress {
    pub bots_up: AtomicU64,
    pub packets: AtomicU64,
    pub lost: AtomicU64,
}

impl Progress {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Prints `progress` twice a second until the returned handle is aborted.
pub fn show(progress: Arc<Progress>, total_bots: usize) -> tokio::task::JoinHandle<()> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last = 0u64;
        loop {
            tick.tick().await;
            let packets = progress.packets.load(Ordering::Relaxed);
            let lost = progress.lost.load(Ordering::Relaxed);
            let loss = if packets + lost == 0 {
                0.0
            } else {
                100.0 * lost as f64 / (packets + lost) as f64
            };
            bar.set_message(format!(
                "bots up {}/{total_bots}, {} packets/s, loss {loss:.2} %",
                progress.bots_up.load(Ordering::Relaxed),
                (packets - last) * 2,
            ));
            bar.tick();
            last = packets;
        }
    })
}
