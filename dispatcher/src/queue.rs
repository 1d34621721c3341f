//! The scan queue: one intent per scan key, ready intents in a priority queue,
//! delayed intents in a [`DelayQueue`] until they are due.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;

use priority_queue::PriorityQueue;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

/// Longest single hop in the delay queue. Its timing wheel cannot hold
/// deadlines much beyond two years, so longer delays are re-armed in hops.
const MAX_HOP: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Why a scan is wanted. Variants are listed highest priority first; see
/// [`Reason::priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A user asked for a rescan.
    ManualRescan,
    /// The scan has never run.
    NewScan,
    /// The scan's spec changed since its last run.
    SpecChanged,
    /// The scan was interrupted (for example by an operator restart) and is
    /// run again.
    Recovered,
    /// A scheduled rescan (cron schedule or rescan age) fell due.
    Scheduled,
    /// A retry after a failed scan or a failed launch.
    Retry,
}

impl Reason {
    /// Every reason, highest priority first.
    pub const ALL: [Reason; 6] = [
        Reason::ManualRescan,
        Reason::NewScan,
        Reason::SpecChanged,
        Reason::Recovered,
        Reason::Scheduled,
        Reason::Retry,
    ];

    /// Priority number: higher is admitted first (`ManualRescan` = 5 …
    /// `Retry` = 0).
    pub const fn priority(self) -> u8 {
        match self {
            Reason::ManualRescan => 5,
            Reason::NewScan => 4,
            Reason::SpecChanged => 3,
            Reason::Recovered => 2,
            Reason::Scheduled => 1,
            Reason::Retry => 0,
        }
    }

    /// A stable snake_case name, fit for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ManualRescan => "manual_rescan",
            Reason::NewScan => "new_scan",
            Reason::SpecChanged => "spec_changed",
            Reason::Recovered => "recovered",
            Reason::Scheduled => "scheduled",
            Reason::Retry => "retry",
        }
    }

    const fn index(self) -> usize {
        (5 - self.priority()) as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A count per [`Reason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasonCounts([usize; 6]);

impl ReasonCounts {
    /// The count for one reason.
    pub fn get(&self, reason: Reason) -> usize {
        self.0[reason.index()]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    /// Every reason with its count, highest priority first.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, usize)> + '_ {
        Reason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    fn add(&mut self, reason: Reason) {
        self.0[reason.index()] += 1;
    }

    fn sub(&mut self, reason: Reason) {
        self.0[reason.index()] -= 1;
    }
}

/// A wish to run one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent<P> {
    /// The scan key, e.g. `namespace/name`. The queue holds at most one
    /// intent per key.
    pub key: String,
    /// Why the scan is wanted; decides its priority.
    pub reason: Reason,
    /// Hosts the scan targets. Two scans that share a host never run at
    /// once. Hosts are compared exactly as given, so callers should
    /// normalise them (lowercase, no port) if that is what they mean.
    pub hosts: BTreeSet<String>,
    /// Caller data carried to the launcher (the operator puts a run id here).
    pub payload: P,
}

impl<P> Intent<P> {
    /// An intent without hosts; add them with [`Intent::with_hosts`].
    pub fn new(key: impl Into<String>, reason: Reason, payload: P) -> Self {
        Self {
            key: key.into(),
            reason,
            hosts: BTreeSet::new(),
            payload,
        }
    }

    /// Adds the hosts the scan targets.
    pub fn with_hosts<H: Into<String>>(mut self, hosts: impl IntoIterator<Item = H>) -> Self {
        self.hosts.extend(hosts.into_iter().map(Into::into));
        self
    }
}

/// What [`ScanQueue::enqueue`] and [`ScanQueue::enqueue_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The key was not queued before.
    Added,
    /// The key was queued; its intent was replaced.
    Updated,
}

/// An intent taken out of the ready queue.
#[derive(Debug, Clone)]
pub struct Queued<P> {
    /// The intent.
    pub intent: Intent<P>,
    /// Since when the intent has been ready to run.
    pub enqueued_at: Instant,
    seq: u64,
}

/// Admission order: higher reason priority first, then oldest first. The
/// sequence number breaks ties between intents enqueued at the same instant
/// (common on a paused clock), so equal-age intents leave in FIFO order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    priority: u8,
    age: Reverse<(Instant, u64)>,
}

impl Rank {
    fn new(reason: Reason, enqueued_at: Instant, seq: u64) -> Self {
        Self {
            priority: reason.priority(),
            age: Reverse((enqueued_at, seq)),
        }
    }
}

#[derive(Debug)]
enum Place {
    Ready {
        enqueued_at: Instant,
        seq: u64,
    },
    Delayed {
        due: Instant,
        timer: delay_queue::Key,
    },
}

#[derive(Debug)]
struct Entry<P> {
    intent: Intent<P>,
    place: Place,
}

/// The queue of scan intents.
///
/// Each key is in at most one place: the ready queue (ordered by reason, then
/// age) or the delay queue (waiting for its due time). The last call for a
/// key wins: [`enqueue`](Self::enqueue) of a delayed key makes it ready now,
/// [`enqueue_at`](Self::enqueue_at) of a ready key delays it. A key that is
/// re-enqueued while ready keeps its original enqueue time, whatever its new
/// reason: it has waited that long, so it stays ahead of everything of its
/// (new) reason that arrived later, and its reported wait stays true.
///
/// Uses Tokio's clock and timer: create and use it inside a Tokio runtime.
#[derive(Debug)]
pub struct ScanQueue<P> {
    entries: HashMap<String, Entry<P>>,
    ready: PriorityQueue<String, Rank>,
    delayed: DelayQueue<String>,
    next_seq: u64,
    pending_counts: ReasonCounts,
    scheduled_counts: ReasonCounts,
}

impl<P> Default for ScanQueue<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> ScanQueue<P> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            entries: HashMap::new(),
            ready: PriorityQueue::new(),
            delayed: DelayQueue::new(),
            next_seq: 0,
            pending_counts: ReasonCounts::default(),
            scheduled_counts: ReasonCounts::default(),
        }
    }

    /// Makes the intent ready now, replacing any intent queued for its key
    /// (ready or delayed).
    pub fn enqueue(&mut self, intent: Intent<P>) -> Enqueued {
        self.put_ready(intent, Instant::now())
    }

    /// Delays the intent until `due`, replacing any intent queued for its key
    /// (ready or delayed). A `due` that has passed makes it ready at once.
    pub fn enqueue_at(&mut self, intent: Intent<P>, due: Instant) -> Enqueued {
        let now = Instant::now();
        if due <= now {
            return self.enqueue(intent);
        }
        let wake = due.min(now + MAX_HOP);
        let key = intent.key.clone();
        self.scheduled_counts.add(intent.reason);
        match self.entries.get_mut(&key) {
            Some(entry) => {
                match entry.place {
                    Place::Ready { .. } => {
                        self.ready.remove(&key);
                        self.pending_counts.sub(entry.intent.reason);
                        let timer = self.delayed.insert_at(key, wake);
                        entry.place = Place::Delayed { due, timer };
                    }
                    Place::Delayed { timer, .. } => {
                        self.scheduled_counts.sub(entry.intent.reason);
                        self.delayed.reset_at(&timer, wake);
                        entry.place = Place::Delayed { due, timer };
                    }
                }
                entry.intent = intent;
                Enqueued::Updated
            }
            None => {
                let timer = self.delayed.insert_at(key.clone(), wake);
                let place = Place::Delayed { due, timer };
                self.entries.insert(key, Entry { intent, place });
                Enqueued::Added
            }
        }
    }

    /// Removes the key from the ready or the delay queue.
    pub fn remove(&mut self, key: &str) -> Option<Intent<P>> {
        let entry = self.entries.remove(key)?;
        match entry.place {
            Place::Ready { .. } => {
                self.ready.remove(key);
                self.pending_counts.sub(entry.intent.reason);
            }
            Place::Delayed { timer, .. } => {
                self.delayed.remove(&timer);
                self.scheduled_counts.sub(entry.intent.reason);
            }
        }
        Some(entry.intent)
    }

    /// Takes the first ready intent in admission order.
    pub fn pop(&mut self) -> Option<Queued<P>> {
        self.pop_first(|_| true)
    }

    /// Takes the first ready intent, in admission order, for which
    /// `admissible` holds. Intents it skips keep their place.
    pub fn pop_first(
        &mut self,
        mut admissible: impl FnMut(&Intent<P>) -> bool,
    ) -> Option<Queued<P>> {
        let mut skipped = Vec::new();
        let found = loop {
            let Some((key, rank)) = self.ready.pop() else {
                break None;
            };
            if admissible(&self.entries[&key].intent) {
                break Some(key);
            }
            skipped.push((key, rank));
        };
        for (key, rank) in skipped {
            self.ready.push(key, rank);
        }
        let entry = self
            .entries
            .remove(&found?)
            .expect("every ready key has an entry");
        self.pending_counts.sub(entry.intent.reason);
        let Place::Ready { enqueued_at, seq } = entry.place else {
            unreachable!("a key in the ready queue is in place Ready")
        };
        Some(Queued {
            intent: entry.intent,
            enqueued_at,
            seq,
        })
    }

    /// Puts a popped intent back where it was, unless its key was queued
    /// again meanwhile.
    pub(crate) fn restore(&mut self, queued: Queued<P>) {
        if self.entries.contains_key(&queued.intent.key) {
            return;
        }
        let Queued {
            intent,
            enqueued_at,
            seq,
        } = queued;
        self.pending_counts.add(intent.reason);
        self.ready.push(
            intent.key.clone(),
            Rank::new(intent.reason, enqueued_at, seq),
        );
        let place = Place::Ready { enqueued_at, seq };
        self.entries
            .insert(intent.key.clone(), Entry { intent, place });
    }

    /// Moves every delayed intent that is due into the ready queue, where it
    /// counts as enqueued at its due time. Returns `Ready(n)` when it moved
    /// `n > 0` intents, else `Pending` (and wakes `cx` when one falls due or
    /// an earlier one is added).
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        let now = Instant::now();
        let mut moved = 0;
        while let Poll::Ready(Some(expired)) = self.delayed.poll_expired(cx) {
            let key = expired.into_inner();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let Place::Delayed { due, .. } = entry.place else {
                continue;
            };
            if due > now {
                let timer = self.delayed.insert_at(key, due.min(now + MAX_HOP));
                entry.place = Place::Delayed { due, timer };
                continue;
            }
            let reason = entry.intent.reason;
            self.scheduled_counts.sub(reason);
            self.pending_counts.add(reason);
            let seq = self.next_seq;
            self.next_seq += 1;
            entry.place = Place::Ready {
                enqueued_at: due,
                seq,
            };
            self.ready.push(key, Rank::new(reason, due, seq));
            moved += 1;
        }
        if moved > 0 {
            Poll::Ready(moved)
        } else {
            Poll::Pending
        }
    }

    /// Waits until at least one delayed intent is due, moves all that are
    /// due into the ready queue and returns how many it moved. Never returns
    /// while nothing is delayed.
    pub async fn next_due(&mut self) -> usize {
        poll_fn(|cx| self.poll_due(cx)).await
    }

    /// Whether the key is queued (ready or delayed).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The intent queued for the key (ready or delayed).
    pub fn get(&self, key: &str) -> Option<&Intent<P>> {
        self.entries.get(key).map(|e| &e.intent)
    }

    /// Since when the key has been ready, if it is in the ready queue.
    pub fn enqueued_at(&self, key: &str) -> Option<Instant> {
        match self.entries.get(key)?.place {
            Place::Ready { enqueued_at, .. } => Some(enqueued_at),
            Place::Delayed { .. } => None,
        }
    }

    /// When the key falls due, if it is in the delay queue.
    pub fn due_at(&self, key: &str) -> Option<Instant> {
        match self.entries.get(key)?.place {
            Place::Ready { .. } => None,
            Place::Delayed { due, .. } => Some(due),
        }
    }

    /// Number of queued keys (ready and delayed).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of ready intents.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Number of delayed intents.
    pub fn delayed_len(&self) -> usize {
        self.entries.len() - self.ready.len()
    }

    /// Ready intents per reason.
    pub fn pending_counts(&self) -> ReasonCounts {
        self.pending_counts
    }

    /// Delayed intents per reason.
    pub fn scheduled_counts(&self) -> ReasonCounts {
        self.scheduled_counts
    }

    /// A page of ready intents in admission order, with their enqueue time.
    pub(crate) fn pending_page(&self, offset: usize, limit: usize) -> Vec<(&Intent<P>, Instant)> {
        let mut ranked: Vec<(&String, &Rank)> = self.ready.iter().collect();
        let by_admission = |a: &(&String, &Rank), b: &(&String, &Rank)| b.1.cmp(a.1);
        let end = offset.saturating_add(limit);
        page(&mut ranked, offset, end, by_admission)
            .iter()
            .map(|(key, rank)| (&self.entries[*key].intent, rank.age.0.0))
            .collect()
    }

    /// A page of delayed intents, soonest due first, with their due time.
    pub(crate) fn scheduled_page(&self, offset: usize, limit: usize) -> Vec<(&Intent<P>, Instant)> {
        let mut due: Vec<(&Intent<P>, Instant)> = self
            .entries
            .values()
            .filter_map(|e| match e.place {
                Place::Delayed { due, .. } => Some((&e.intent, due)),
                Place::Ready { .. } => None,
            })
            .collect();
        let by_due = |a: &(&Intent<P>, Instant), b: &(&Intent<P>, Instant)| {
            a.1.cmp(&b.1).then_with(|| a.0.key.cmp(&b.0.key))
        };
        page(&mut due, offset, offset.saturating_add(limit), by_due).to_vec()
    }
}

/// Sorts just enough of `items` to return `items[offset..end]` in order.
fn page<T>(items: &mut [T], offset: usize, end: usize, cmp: impl Fn(&T, &T) -> Ordering) -> &[T] {
    let end = end.min(items.len());
    if offset >= end {
        return &[];
    }
    let items = if end < items.len() {
        items.select_nth_unstable_by(end, &cmp).0
    } else {
        items
    };
    items.sort_unstable_by(&cmp);
    &items[offset..end]
}

impl<P> ScanQueue<P> {
    fn put_ready(&mut self, intent: Intent<P>, since: Instant) -> Enqueued {
        let key = intent.key.clone();
        self.pending_counts.add(intent.reason);
        match self.entries.get_mut(&key) {
            Some(entry) => {
                match entry.place {
                    Place::Ready { enqueued_at, seq } => {
                        self.pending_counts.sub(entry.intent.reason);
                        if entry.intent.reason != intent.reason {
                            self.ready
                                .change_priority(&key, Rank::new(intent.reason, enqueued_at, seq));
                        }
                    }
                    Place::Delayed { timer, .. } => {
                        self.delayed.remove(&timer);
                        self.scheduled_counts.sub(entry.intent.reason);
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        self.ready.push(key, Rank::new(intent.reason, since, seq));
                        entry.place = Place::Ready {
                            enqueued_at: since,
                            seq,
                        };
                    }
                }
                entry.intent = intent;
                Enqueued::Updated
            }
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.ready
                    .push(key.clone(), Rank::new(intent.reason, since, seq));
                let place = Place::Ready {
                    enqueued_at: since,
                    seq,
                };
                self.entries.insert(key, Entry { intent, place });
                Enqueued::Added
            }
        }
    }
}
