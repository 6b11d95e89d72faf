//! The engine's deadlines as a min-heap, so finding the next one and the
//! due ones does not scan every participant on every input (a linear scan
//! was 2-5 % of the server's CPU in `BENCHMARKS.md`'s profiles).
//!
//! Entries are not removed when a deadline moves: each is checked against
//! the entry the participant has armed when it reaches the top
//! (`is_current`), and stale ones are dropped then. A peer whose deadline
//! moves later keeps its entry and is re-armed when it fires (`Peer::armed`),
//! so entries are added only for deadlines that move earlier.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::ParticipantKey;

/// Which deadline of a participant an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    Publisher,
    Subscriber,
    /// The reconnect grace period ends.
    Grace,
    /// A participant's media must have come up by now.
    MediaDeadline,
}

/// Generic over the time type (the engine's is `Instant`) so the tests
/// need no clock.
#[derive(Debug)]
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(T, ParticipantKey, TimerKind)>>,
}

impl<T: Ord> Default for Timers<T> {
    fn default() -> Timers<T> {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<T: Ord + Copy> Timers<T> {
    pub fn schedule(&mut self, at: T, key: ParticipantKey, kind: TimerKind) {
        self.heap.push(Reverse((at, key, kind)));
    }

    /// The earliest current deadline; stale entries above it are dropped.
    pub fn next(&mut self, is_current: impl Fn(T, ParticipantKey, TimerKind) -> bool) -> Option<T> {
        while let Some(Reverse((at, key, kind))) = self.heap.peek().copied() {
            if is_current(at, key, kind) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Every current deadline at or before `now`, each once.
    pub fn due(
        &mut self,
        now: T,
        is_current: impl Fn(T, ParticipantKey, TimerKind) -> bool,
    ) -> Vec<(ParticipantKey, TimerKind)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, key, kind))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if is_current(at, key, kind) {
                due.push((key, kind));
            }
        }
        // The same deadline may have been scheduled twice (a value that
        // moved away and back): handle it once.
        due.sort_unstable();
        due.dedup();
        due
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops every stale entry (the engine calls it when stale entries
    /// pile up behind far deadlines).
    pub fn compact(&mut self, is_current: impl Fn(T, ParticipantKey, TimerKind) -> bool) {
        self.heap
            .retain(|Reverse((at, key, kind))| is_current(*at, *key, *kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_are_skipped_and_due_ones_come_once() {
        let at = |ms: u64| ms;
        let (a, b) = (ParticipantKey(1), ParticipantKey(2));
        // a's publisher deadline moved 10 -> 30 -> 10; b's grace is at 20.
        let current = |k: ParticipantKey, kind| match (k, kind) {
            (ParticipantKey(1), TimerKind::Publisher) => Some(at(10)),
            (ParticipantKey(2), TimerKind::Grace) => Some(at(20)),
            _ => None,
        };
        let is_current = |t, k, kind| current(k, kind) == Some(t);
        let mut timers = Timers::default();
        timers.schedule(at(5), a, TimerKind::Subscriber); // stale: a has none now
        timers.schedule(at(10), a, TimerKind::Publisher);
        timers.schedule(at(30), a, TimerKind::Publisher); // stale
        timers.schedule(at(10), a, TimerKind::Publisher);
        timers.schedule(at(20), b, TimerKind::Grace);
        assert_eq!(timers.next(is_current), Some(at(10)));
        assert_eq!(timers.due(at(9), is_current), []);
        assert_eq!(
            timers.due(at(25), is_current),
            [(a, TimerKind::Publisher), (b, TimerKind::Grace)]
        );
        // Only the stale 30 ms entry is left; compaction drops it.
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next(is_current), None);
        timers.schedule(at(40), b, TimerKind::Subscriber);
        timers.compact(is_current);
        assert_eq!(timers.len(), 0);
    }
}
