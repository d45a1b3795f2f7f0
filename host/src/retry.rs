//! One retry policy for what heals by waiting: the database and NATS while a worker commits,
//! the first connection to NATS, and reconnecting to it. Exponential from 100 ms, doubled
//! each time, with jitter (each pause is lengthened by a random share of itself, up to as much
//! again) so that the daemons of a fleet do not retry against a restarted server in step; no
//! pause is longer than its cap. The pauses come from `backon`.

use std::time::Duration;

/// The first pause.
pub const FIRST: Duration = Duration::from_millis(100);

/// The pauses between attempts, never ending, none longer than `cap`.
pub fn pauses(cap: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    // backon adds the jitter to a delay already capped: cap the delay at half.
    backon::ExponentialBuilder::default()
        .with_min_delay(FIRST.min(cap / 2))
        .with_max_delay(cap / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The pause before attempt `n` (from 1) of a series that keeps no state of its own (NATS
/// reconnects count their attempts themselves).
pub fn pause_before(n: usize, cap: Duration) -> Duration {
    pauses(cap).nth(n.saturating_sub(1)).unwrap_or(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_with_jitter_of_at_most_as_much_again_and_never_pass_the_cap() {
        let cap = Duration::from_secs(5);
        let got: Vec<Duration> = pauses(cap).take(10).collect();
        let mut base = FIRST;
        for pause in &got {
            // (backon computes in f32 seconds: a nanosecond or so either way)
            let ms = Duration::from_millis(1);
            assert!(*pause + ms >= base && *pause <= base * 2 + ms, "{pause:?}, {base:?}: {got:?}");
            assert!(*pause <= cap, "{pause:?}: {got:?}");
            base = (base * 2).min(cap / 2);
        }
        assert!(got[9] >= cap / 2, "{got:?}");
        assert!(pause_before(1, cap) <= FIRST * 2 + Duration::from_millis(1));
        assert!(pause_before(100, cap) >= cap / 2 && pause_before(100, cap) <= cap);
        // Jittered: ten series do not all pause alike.
        let firsts: std::collections::BTreeSet<Duration> =
            (0..10).map(|_| pauses(cap).next().unwrap()).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }
}
