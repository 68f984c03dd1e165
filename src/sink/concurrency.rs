//! Adaptive request concurrency for insertAll: how many requests are in
//! flight follows what BigQuery answers (AIMD, in the spirit of Vector's
//! adaptive request concurrency).
//!
//! - The limit starts at [`INITIAL_LIMIT`] (or the configured maximum, if
//!   lower) and stays between 1 and `bigquery.max_inflight_requests`.
//! - Decisions are taken per window: a window starts when the limit moves,
//!   and only requests that started in it count for the next move (those
//!   still in flight from before only free their permit and feed the
//!   average). So the limit moves at most once per round trip, and the
//!   requests of a storm that were already in flight cut it once, not once
//!   each.
//! - **Slow start, then additive increase**: once a limit's worth of
//!   requests of the window were answered, none slow, and the limit was
//!   reached while they ran, it rises: it doubles (up to the maximum) until
//!   the first decrease, as TCP's slow start does, and rises by one per
//!   window after that. With 150 ms between clouds the limit covers the
//!   latency within two round trips of the start (16 -> 32 -> 64), where +1
//!   per round trip took about 2 s; after a cut it probes back one step at a
//!   time.
//! - **No rise into a queue**: a rise also needs the window's mean round
//!   trip within [`QUEUE_FACTOR`] of the base (the lowest window mean since
//!   the last cut). A server that is itself the bottleneck (one process,
//!   like the emulator) answers each request later the more are in flight:
//!   there the limit holds instead of climbing to the ceiling and delaying
//!   every batch behind its slowest request. The base is measured again
//!   after a cut (a latency step up cuts, so the new latency becomes the
//!   base); a slow drift above 1.5x the base without any cut holds the limit
//!   where it is, never lowers it.
//! - **Multiplicative decrease**: backpressure (HTTP 429, 5xx, timeouts,
//!   connection errors) or an answer slower than [`SLOW_FACTOR`] times the
//!   moving average of round trips cuts the limit to [`DECREASE`] of itself
//!   at once. A lasting latency step becomes the average within a few round
//!   trips, and the limit climbs again.
//! - Permits are taken before a request's body is built and its
//!   `_landfall_ingested` stamped (docs/design.md, invariant 10), exactly as
//!   with the fixed limit before; ordering, the WAL and the commit point do
//!   not depend on the limit. Only how many requests wait changes.
//!
//! With `bigquery.adaptive_concurrency = false` the limit is fixed at the
//! maximum.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// Where the limit starts. With 150 ms between clouds each doubling of slow
/// start costs a round trip: from 4 (the fixed limit of the first releases)
/// the climb to 64 took four, a fifth of a 200k-message backlog's drain in
/// the bench (docs/performance.md, "f/e"). A server that cannot take 16 at
/// once answers 429 or slowly, and the first window cuts.
pub const INITIAL_LIMIT: usize = 16;
/// A round trip this many times slower than the moving average is a sign of
/// saturation.
pub const SLOW_FACTOR: f64 = 2.0;
/// What a decrease keeps of the limit.
pub const DECREASE: f64 = 0.75;
/// A window whose mean round trip exceeds the base round trip by this
/// factor shows requests queueing at the server: the limit does not rise.
pub const QUEUE_FACTOR: f64 = 1.5;
/// Weight of a new round trip in the moving average.
const EWMA_WEIGHT: f64 = 0.1;
/// Round trips seen before slowness can cut the limit.
const WARMUP: u64 = 8;

/// How a request ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer (whatever it said of the rows).
    Answered,
    /// 429, 5xx, a timeout or a connection error: BigQuery asks for less.
    Backpressure,
    /// Neither (a refused request, a shutdown): the limit does not move.
    Neutral,
}

#[derive(Debug)]
struct State {
    limit: usize,
    max: usize,
    adaptive: bool,
    in_flight: usize,
    /// Moving average of answered round trips, seconds.
    rtt: Option<f64>,
    samples: u64,
    /// Bumped whenever the limit moves: the window permits belong to.
    window: u64,
    /// Requests of the current window answered, and whether the limit was
    /// reached by one of them.
    answered: usize,
    saturated: bool,
    /// Doubling on increase: true until the first decrease.
    slow_start: bool,
    /// Sum of the current window's answered round trips, seconds.
    window_rtt: f64,
    /// The lowest window mean seen since the last cut: the round trip
    /// without queueing.
    base: Option<f64>,
}

/// The limiter; cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Concurrency {
    state: Arc<Mutex<State>>,
    released: Arc<Notify>,
}

/// One request's permission to be in flight. Report how it ended with
/// [`Permit::done`]; dropping it without (a shutdown) only frees it.
#[must_use]
pub struct Permit {
    limiter: Concurrency,
    saturated: bool,
    window: u64,
    started: Instant,
    open: bool,
}

impl Concurrency {
    /// Up to `max` requests at once; adaptive, or fixed at `max`.
    pub fn new(max: usize, adaptive: bool) -> Concurrency {
        let max = max.max(1);
        let limit = if adaptive { INITIAL_LIMIT.min(max) } else { max };
        Concurrency {
            state: Arc::new(Mutex::new(State {
                limit,
                max,
                adaptive,
                in_flight: 0,
                rtt: None,
                samples: 0,
                window: 0,
                answered: 0,
                saturated: false,
                slow_start: true,
                window_rtt: 0.0,
                base: None,
            })),
            released: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit (for `/metrics`).
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Waits until fewer than the limit requests are in flight.
    pub async fn acquire(&self) -> Permit {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    let saturated = s.in_flight >= s.limit;
                    return Permit { limiter: self.clone(), saturated, window: s.window, started: Instant::now(), open: true };
                }
            }
            released.await;
        }
    }

    fn release(&self, p: &Permit, outcome: Outcome) {
        let rtt = p.started.elapsed().as_secs_f64();
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.adaptive {
            let slow = s.samples >= WARMUP && s.rtt.is_some_and(|avg| rtt > avg * SLOW_FACTOR);
            if outcome == Outcome::Answered {
                s.rtt = Some(match s.rtt {
                    Some(avg) => avg + EWMA_WEIGHT * (rtt - avg),
                    None => rtt,
                });
                s.samples += 1;
            }
            if p.window == s.window {
                let cut = outcome == Outcome::Backpressure || (outcome == Outcome::Answered && slow);
                if cut {
                    let down = ((s.limit as f64 * DECREASE).floor() as usize).max(1);
                    s.slow_start = false;
                    // The latency may have stepped: the base is measured again.
                    s.base = None;
                    set_limit(&mut s, down);
                } else if outcome == Outcome::Answered {
                    s.answered += 1;
                    s.window_rtt += rtt;
                    s.saturated |= p.saturated;
                    if s.answered >= s.limit && s.saturated && s.limit < s.max {
                        let mean = s.window_rtt / s.answered as f64;
                        let base = s.base.map_or(mean, |b| b.min(mean));
                        s.base = Some(base);
                        if mean <= base * QUEUE_FACTOR {
                            let up = if s.slow_start { (s.limit * 2).min(s.max) } else { s.limit + 1 };
                            set_limit(&mut s, up);
                        } else {
                            // More requests made each one slower (a saturated
                            // server): hold the limit, measure a fresh window.
                            s.slow_start = false;
                            let same = s.limit;
                            set_limit(&mut s, same);
                        }
                    }
                }
            }
        }
        drop(s);
        self.released.notify_waiters();
    }
}

/// Moves the limit and starts a new window.
fn set_limit(s: &mut State, limit: usize) {
    s.limit = limit;
    s.window += 1;
    s.answered = 0;
    s.saturated = false;
    s.window_rtt = 0.0;
}

impl Permit {
    /// The request ended with `outcome`.
    pub fn done(mut self, outcome: Outcome) {
        self.open = false;
        self.limiter.clone().release(&self, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            self.limiter.clone().release(self, Outcome::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `n` rounds of `limit` concurrent requests, each ending with
    /// `outcome` after `rtt` (reported, not slept).
    async fn rounds(c: &Concurrency, n: usize, rtt: Duration, outcome: Outcome) {
        for _ in 0..n {
            let mut permits = Vec::new();
            for _ in 0..c.limit() {
                permits.push(c.acquire().await);
            }
            for mut p in permits {
                p.started = Instant::now() - rtt;
                p.done(outcome);
            }
        }
    }

    #[tokio::test]
    async fn the_limit_climbs_while_requests_fill_it_and_answer_in_time() {
        let c = Concurrency::new(1024, true);
        assert_eq!(c.limit(), INITIAL_LIMIT);
        // Slow start: doubles per saturated round, never above the maximum.
        rounds(&c, 1, Duration::from_millis(150), Outcome::Answered).await;
        assert_eq!(c.limit(), INITIAL_LIMIT * 2, "doubles in slow start");
        rounds(&c, 1, Duration::from_millis(150), Outcome::Answered).await;
        assert_eq!(c.limit(), INITIAL_LIMIT * 4);
        let c = Concurrency::new(INITIAL_LIMIT * 3, true);
        rounds(&c, 40, Duration::from_millis(150), Outcome::Answered).await;
        assert_eq!(c.limit(), INITIAL_LIMIT * 3, "never above the maximum");
        // After the first cut the climb is one step per saturated round.
        let c = Concurrency::new(1024, true);
        rounds(&c, 3, Duration::from_millis(150), Outcome::Answered).await;
        assert_eq!(c.limit(), INITIAL_LIMIT * 8);
        rounds(&c, 1, Duration::from_millis(150), Outcome::Backpressure).await;
        let cut = c.limit();
        assert_eq!(cut, (INITIAL_LIMIT as f64 * 8.0 * DECREASE) as usize);
        rounds(&c, 10, Duration::from_millis(150), Outcome::Answered).await;
        assert_eq!(c.limit(), cut + 10, "one step per saturated round after a cut");
        // Requests that do not fill the limit do not raise it.
        let c = Concurrency::new(1024, true);
        for _ in 0..20 {
            c.acquire().await.done(Outcome::Answered);
        }
        assert_eq!(c.limit(), INITIAL_LIMIT);
        // A maximum below the start is where it starts.
        assert_eq!(Concurrency::new(3, true).limit(), 3);
    }

    #[tokio::test]
    async fn backpressure_cuts_the_limit_once_per_window_down_to_one_and_it_recovers_after() {
        let c = Concurrency::new(32, true);
        rounds(&c, 20, Duration::from_millis(100), Outcome::Answered).await;
        let high = c.limit();
        assert_eq!(high, 32, "slow start reached the maximum");
        rounds(&c, 1, Duration::from_millis(100), Outcome::Backpressure).await;
        // All 32 requests in flight failed: one cut, not 32.
        assert_eq!(c.limit(), (high as f64 * DECREASE) as usize);
        rounds(&c, 30, Duration::from_millis(100), Outcome::Backpressure).await;
        assert_eq!(c.limit(), 1, "a storm of 429s ends at one request in flight");
        rounds(&c, 10, Duration::from_millis(100), Outcome::Answered).await;
        assert_eq!(c.limit(), 11, "recovered one step per round");
    }

    #[tokio::test]
    async fn a_latency_step_backs_off_then_the_new_latency_becomes_usual() {
        let c = Concurrency::new(32, true);
        rounds(&c, 12, Duration::from_millis(10), Outcome::Answered).await;
        let before = c.limit();
        rounds(&c, 3, Duration::from_millis(400), Outcome::Answered).await;
        assert!(c.limit() < before, "{before} -> {}", c.limit());
        let low = c.limit();
        // Once the average has caught up with 400 ms, it is not slow any more.
        rounds(&c, 60, Duration::from_millis(400), Outcome::Answered).await;
        assert!(c.limit() > low, "no recovery at the new latency: {low} -> {}", c.limit());
    }

    #[tokio::test]
    async fn a_server_that_answers_later_the_more_it_is_sent_holds_the_limit_below_the_ceiling() {
        // A saturated server: each request waits behind the others, so the
        // round trip grows with the number in flight (25 ms per request).
        let c = Concurrency::new(256, true);
        for _ in 0..40 {
            let rtt = Duration::from_millis(25 * c.limit() as u64);
            rounds(&c, 1, rtt, Outcome::Answered).await;
        }
        // 16 -> 32 rises (the first window sets the base); at 32 the round
        // trip is twice the base, so the limit holds there.
        assert_eq!(c.limit(), INITIAL_LIMIT * 2, "climbed into the queue");
        // The same number of rounds at a constant round trip reaches it.
        let c = Concurrency::new(256, true);
        rounds(&c, 40, Duration::from_millis(150), Outcome::Answered).await;
        assert_eq!(c.limit(), 256);
    }

    #[tokio::test]
    async fn fixed_mode_and_the_bound_on_requests_in_flight() {
        let c = Concurrency::new(6, false);
        assert_eq!(c.limit(), 6);
        rounds(&c, 5, Duration::from_millis(10), Outcome::Backpressure).await;
        assert_eq!(c.limit(), 6, "fixed: backpressure does not move it");
        let held: Vec<Permit> = futures::future::join_all((0..6).map(|_| c.acquire())).await;
        assert_eq!(c.in_flight(), 6);
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await.done(Outcome::Neutral) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a seventh request went in flight");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(c.in_flight(), 0);
    }
}
