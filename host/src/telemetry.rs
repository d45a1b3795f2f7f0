//! What a daemon's workers report beside their progress: recent failures, the guest-call
//! histogram, time per stage. Below the daemon and the HTTP endpoint, which both read it.

use std::time::Duration;

/// How many recent failures a plugin's progress keeps.
pub const RECENT_FAILURES: usize = 20;

/// An event a plugin rejected, as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentFailure {
    /// When it was committed.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Stream sequence.
    pub seq: u64,
    /// State key.
    pub key: String,
    /// Kind of failure.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// Counts of durations in fixed buckets (Prometheus' histogram, non-cumulative here).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Histogram {
    /// Observations at most each of [`Histogram::BOUNDS`] (and above the one before).
    pub buckets: [u64; Histogram::BOUNDS.len()],
    /// Observations.
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_nanos: u64,
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds: a guest call takes tens of microseconds.
    pub const BOUNDS: [f64; 12] =
        [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0];

    /// Counts one duration.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = Self::BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_nanos += d.as_nanos() as u64;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
    }
}

/// Time spent per stage of the pipeline, summed over the batches committed: what
/// `docs/performance.md` reads per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// Fold thread: waiting for messages and taking them from the client (the client itself
    /// reads them off the connection on the runtime's threads). In a backlog it stays near
    /// zero unless the stream delivers slower than the plugin folds.
    pub read: Duration,
    /// Fold thread: checking and decoding the messages into events, computing their keys.
    pub decode: Duration,
    /// Fold thread: reading the states of keys not in memory.
    pub states: Duration,
    /// Fold thread: the guest calls (with the effect checks of the batch path).
    pub guest: Duration,
    /// Fold thread: the rest of the fold: routing effects, rejections, snapshots.
    pub route: Duration,
    /// Commit thread: the transaction (SQL effects, states, rejections, outbox, checkpoint).
    pub commit: Duration,
    /// Commit thread: publishing the outbox.
    pub publish: Duration,
    /// Commit thread: acking the batch.
    pub ack: Duration,
}

impl Stages {
    pub(crate) fn add(&mut self, other: &Stages) {
        self.read += other.read;
        self.decode += other.decode;
        self.states += other.states;
        self.guest += other.guest;
        self.route += other.route;
        self.commit += other.commit;
        self.publish += other.publish;
        self.ack += other.ack;
    }
}
