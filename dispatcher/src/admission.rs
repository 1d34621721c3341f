//! Admission: the global concurrency limit, the job-creation rate limit and
//! per-host exclusivity.

use std::collections::{BTreeSet, HashMap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::queue::{Blocker, Intent, Reason};

/// Limits the dispatcher admits scans under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most scans running at once, counting launches still in flight.
    pub max_concurrent: NonZeroUsize,
    /// Job-creation rate limit; `None` is unlimited.
    pub rate_limit: Option<RateLimit>,
}

impl Config {
    /// At most `max_concurrent` scans at once, no rate limit.
    pub fn new(max_concurrent: NonZeroUsize) -> Self {
        Self {
            max_concurrent,
            rate_limit: None,
        }
    }

    /// Adds a job-creation rate limit.
    pub fn with_rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = Some(rate_limit);
        self
    }
}

/// A launch rate limit (a GCRA, enforced by `governor`).
///
/// Launches are paced one per `60 s / per_minute`; up to `burst` may go at
/// once after a quiet spell. With the default burst of 1 no 60-second window
/// ever holds more than `per_minute` launches; with a burst `b` it holds at
/// most `per_minute + b - 1`. Every launch attempt counts, failed ones too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained launches per minute.
    pub per_minute: NonZeroU32,
    /// Launches allowed back to back after a quiet spell.
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `n` launches per minute, evenly paced (burst 1).
    pub fn per_minute(n: NonZeroU32) -> Self {
        Self {
            per_minute: n,
            burst: NonZeroU32::MIN,
        }
    }

    /// Allows `burst` launches back to back.
    pub fn with_burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    fn quota(self) -> Quota {
        Quota::per_minute(self.per_minute).allow_burst(self.burst)
    }
}

/// A `governor` clock that reads Tokio's clock, so the rate limit follows
/// `tokio::time::pause`/`advance` in tests. Its instants are the time since
/// the clock was created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A scan holding a slot: launching, or running until reported finished.
#[derive(Debug)]
pub(crate) struct Running<P> {
    /// Tells this run apart from a later run of the same key, so a late
    /// launch result cannot touch the wrong run.
    pub ticket: u64,
    pub hosts: BTreeSet<String>,
    /// `None` for adopted scans.
    pub reason: Option<Reason>,
    pub payload: P,
    pub started_at: Instant,
    pub launching: bool,
}

/// Who holds the slots and hosts, and whether the next launch may go.
#[derive(Debug)]
pub(crate) struct Admission<P> {
    config: Config,
    limiter: Option<Limiter>,
    running: HashMap<String, Running<P>>,
    busy_hosts: HashMap<String, usize>,
    next_ticket: u64,
}

impl<P> Admission<P> {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            limiter: config
                .rate_limit
                .map(|r| RateLimiter::direct_with_clock(r.quota(), TokioClock::new())),
            running: HashMap::new(),
            busy_hosts: HashMap::new(),
            next_ticket: 0,
        }
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// Slots held: running scans plus launches in flight.
    pub fn slots_used(&self) -> usize {
        self.running.len()
    }

    pub fn has_free_slot(&self) -> bool {
        self.running.len() < self.config.max_concurrent.get()
    }

    /// What keeps the intent from starting now as far as exclusivity goes:
    /// its key is running, or one of its hosts is busy.
    pub fn blocker(&self, intent: &Intent<P>) -> Option<Blocker> {
        if self.running.contains_key(&intent.key) {
            return Some(Blocker::Key(intent.key.clone()));
        }
        let busy = intent
            .hosts
            .iter()
            .find(|h| self.busy_hosts.contains_key(*h))?;
        Some(Blocker::Host(busy.clone()))
    }

    /// Takes one launch token, or says how long until one is free.
    pub fn take_token(&self) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
        }
    }

    /// Holds a slot and the hosts for `key`; returns the run's ticket.
    pub fn hold(
        &mut self,
        key: String,
        hosts: BTreeSet<String>,
        reason: Option<Reason>,
        payload: P,
        launching: bool,
    ) -> u64 {
        for host in &hosts {
            *self.busy_hosts.entry(host.clone()).or_default() += 1;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let run = Running {
            ticket,
            hosts,
            reason,
            payload,
            started_at: Instant::now(),
            launching,
        };
        if let Some(old) = self.running.insert(key, run) {
            self.free_hosts(&old.hosts);
        }
        ticket
    }

    /// Frees the slot and hosts held for `key`.
    pub fn release(&mut self, key: &str) -> Option<Running<P>> {
        let run = self.running.remove(key)?;
        self.free_hosts(&run.hosts);
        Some(run)
    }

    pub fn get(&self, key: &str) -> Option<&Running<P>> {
        self.running.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Running<P>> {
        self.running.get_mut(key)
    }

    pub fn is_running(&self, key: &str) -> bool {
        self.running.contains_key(key)
    }

    pub fn runs(&self) -> impl Iterator<Item = (&String, &Running<P>)> {
        self.running.iter()
    }

    fn free_hosts(&mut self, hosts: &BTreeSet<String>) {
        for host in hosts {
            if let Some(n) = self.busy_hosts.get_mut(host) {
                *n -= 1;
                if *n == 0 {
                    self.busy_hosts.remove(host);
                }
            }
        }
    }
}
