//! What a worker reports: progress, recent failures, the guest-call histogram, time per stage.

use super::*;

/// What a plugin has done since the daemon started, updated after every commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last stream sequence committed (the checkpoint).
    pub committed_seq: u64,
    /// The version that committed it.
    pub digest: String,
    /// Events folded and committed (rejected ones included).
    pub events: u64,
    /// Events the plugin rejected.
    pub rejected: u64,
    /// Batches committed.
    pub batches: u64,
    /// Transient failures retried so far: commits, publishes of emitted messages, state
    /// reads, binding the source.
    pub retries: u64,
    /// Time spent folding (guest calls and effect checks).
    pub fold_time: Duration,
    /// Time spent committing, publishing and acking.
    pub commit_time: Duration,
    /// Versions swapped in and folding (counted at the new version's first event).
    pub swaps: u64,
    /// The last swap's pause: from the end of the old version's last event to the start of
    /// the new version's first (idle time included, if no event was waiting).
    pub last_swap_pause: Option<Duration>,
    /// The last version refused since the running one was loaded, and why.
    pub refused: Option<Refusal>,
    /// The transient failure the plugin is retrying now (its stream missing, the database or
    /// NATS unreachable), if any: cleared when the retried operation succeeds.
    pub stalled: Option<String>,
    /// The stream sequence of the first event the last swapped-in version folded.
    pub swapped_at_seq: Option<u64>,
    /// The shadow version folding beside the live one, if any.
    pub shadow: Option<ShadowProgress>,
    /// A new version rebuilding its states and read model from the stream start, if any.
    pub rebuild: Option<RebuildProgress>,
    /// Events rejected, by kind of failure.
    pub failures: BTreeMap<String, u64>,
    /// Effects accepted, by kind.
    pub effects: BTreeMap<String, u64>,
    /// Events sent to the dead-letter subject.
    pub dead_letters: u64,
    /// Fuel the guest calls consumed.
    pub fuel: u64,
    /// Durations of the guest calls that folded events.
    pub calls: Histogram,
    /// Where the time went, stage by stage (see [`Stages`]).
    pub stages: Stages,
    /// The last failures (at most [`RECENT_FAILURES`]), oldest first.
    pub recent_failures: std::collections::VecDeque<RecentFailure>,
}

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
    pub(super) fn add(&mut self, other: &Stages) {
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
