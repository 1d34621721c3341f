//! The scan queue: one intent per scan key, pending intents in a priority queue,
//! scheduled intents in a [`DelayQueue`] until they are due.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, HashMap, HashSet};
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

/// An intent taken out of the pending queue.
#[derive(Debug, Clone)]
pub struct Queued<P> {
    /// The intent.
    pub intent: Intent<P>,
    /// Since when the intent has been pending to run.
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

/// What keeps a pending intent from being admitted. See
/// [`ScanQueue::pop_first`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Blocker {
    /// A scan of the intent's own key is running.
    Key(String),
    /// A host the intent targets is busy.
    Host(String),
}

#[derive(Debug)]
enum Place {
    /// In the pending heap.
    Pending { enqueued_at: Instant, seq: u64 },
    /// Pending, but set aside until its blocker is released.
    Parked {
        enqueued_at: Instant,
        seq: u64,
        blocker: Blocker,
    },
    /// In the delay queue until due.
    Scheduled {
        due: Instant,
        timer: delay_queue::Key,
    },
}

#[derive(Debug)]
struct Entry<P> {
    intent: Intent<P>,
    place: Place,
}

impl<P> Entry<P> {
    /// Its place in admission order, if it is pending (parked or not).
    fn pending_rank(&self) -> Option<Rank> {
        match self.place {
            Place::Pending { enqueued_at, seq }
            | Place::Parked {
                enqueued_at, seq, ..
            } => Some(Rank::new(self.intent.reason, enqueued_at, seq)),
            Place::Scheduled { .. } => None,
        }
    }
}

/// Where [`ScanQueue::locate`] found a key.
#[derive(Debug)]
pub(crate) enum Located<'a, P> {
    /// Pending (parked or not), `position` in admission order.
    Pending {
        intent: &'a Intent<P>,
        enqueued_at: Instant,
        position: usize,
    },
    /// Scheduled until `due`.
    Scheduled { intent: &'a Intent<P>, due: Instant },
}

/// The queue of scan intents.
///
/// Each key is in at most one place: pending (ordered by reason, then age) or
/// scheduled (waiting for its due time). The last call for a key wins:
/// [`enqueue`](Self::enqueue) of a scheduled key makes it pending now,
/// [`enqueue_at`](Self::enqueue_at) of a pending key schedules it for later. A key that is
/// re-enqueued while pending keeps its original enqueue time, whatever its new
/// reason: it has waited that long, so it stays ahead of everything of its
/// (new) reason that arrived later, and its reported wait stays true.
///
/// Uses Tokio's clock and timer: create and use it inside a Tokio runtime.
#[derive(Debug)]
pub struct ScanQueue<P> {
    entries: HashMap<String, Entry<P>>,
    pending: PriorityQueue<String, Rank>,
    parked: HashMap<Blocker, HashSet<String>>,
    scheduled: DelayQueue<String>,
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
            pending: PriorityQueue::new(),
            parked: HashMap::new(),
            scheduled: DelayQueue::new(),
            next_seq: 0,
            pending_counts: ReasonCounts::default(),
            scheduled_counts: ReasonCounts::default(),
        }
    }

    /// Makes the intent pending now, replacing any intent queued for its key
    /// (pending or scheduled). A parked key is unparked.
    pub fn enqueue(&mut self, intent: Intent<P>) -> Enqueued {
        let now = Instant::now();
        match self.take(&intent.key) {
            Some((key, old)) => {
                let (since, seq) = match old.place {
                    Place::Pending { enqueued_at, seq }
                    | Place::Parked {
                        enqueued_at, seq, ..
                    } => (enqueued_at, seq),
                    Place::Scheduled { .. } => (now, self.next_seq()),
                };
                self.insert_pending(key, intent, since, seq);
                Enqueued::Updated
            }
            None => {
                let seq = self.next_seq();
                self.insert_pending(intent.key.clone(), intent, now, seq);
                Enqueued::Added
            }
        }
    }

    /// Delays the intent until `due`, replacing any intent queued for its key
    /// (pending or scheduled). A `due` that has passed makes it pending at once.
    pub fn enqueue_at(&mut self, intent: Intent<P>, due: Instant) -> Enqueued {
        let now = Instant::now();
        if due <= now {
            return self.enqueue(intent);
        }
        match self.take(&intent.key) {
            Some((key, _)) => {
                self.insert_scheduled(key, intent, due, now);
                Enqueued::Updated
            }
            None => {
                self.insert_scheduled(intent.key.clone(), intent, due, now);
                Enqueued::Added
            }
        }
    }

    /// Removes the key, wherever it is queued.
    pub fn remove(&mut self, key: &str) -> Option<Intent<P>> {
        self.take(key).map(|(_, entry)| entry.intent)
    }

    /// Takes the first pending intent in admission order, parked ones aside.
    pub fn pop(&mut self) -> Option<Queued<P>> {
        self.pop_first(|_| None)
    }

    /// Takes the first pending intent, in admission order, that `blocked_by`
    /// finds unblocked.
    ///
    /// Intents it finds blocked are parked: they keep their place in the
    /// order, but pops pass them by until [`unpark`](Self::unpark) is called
    /// with their blocker (or they are enqueued again). So a crowd of
    /// blocked intents is looked at once, not on every pop.
    pub fn pop_first(
        &mut self,
        mut blocked_by: impl FnMut(&Intent<P>) -> Option<Blocker>,
    ) -> Option<Queued<P>> {
        while let Some((key, _)) = self.pending.pop() {
            let entry = self
                .entries
                .get_mut(&key)
                .expect("every pending key has an entry");
            let Place::Pending { enqueued_at, seq } = entry.place else {
                unreachable!("a key in the pending heap is in place Pending")
            };
            match blocked_by(&entry.intent) {
                Some(blocker) => {
                    self.parked.entry(blocker.clone()).or_default().insert(key);
                    entry.place = Place::Parked {
                        enqueued_at,
                        seq,
                        blocker,
                    };
                }
                None => {
                    let entry = self.entries.remove(&key).expect("checked above");
                    self.pending_counts.sub(entry.intent.reason);
                    return Some(Queued {
                        intent: entry.intent,
                        enqueued_at,
                        seq,
                    });
                }
            }
        }
        None
    }

    /// Returns the intents parked on `blocker` to their place in the pending
    /// order; returns how many.
    pub fn unpark(&mut self, blocker: &Blocker) -> usize {
        let Some(keys) = self.parked.remove(blocker) else {
            return 0;
        };
        let unparked = keys.len();
        for key in keys {
            let entry = self
                .entries
                .get_mut(&key)
                .expect("every parked key has an entry");
            let Place::Parked {
                enqueued_at, seq, ..
            } = entry.place
            else {
                unreachable!("a key in the parking lot is in place Parked")
            };
            entry.place = Place::Pending { enqueued_at, seq };
            self.pending
                .push(key, Rank::new(entry.intent.reason, enqueued_at, seq));
        }
        unparked
    }

    /// Puts a popped intent back where it was, unless its key was queued
    /// again meanwhile.
    pub(crate) fn restore(&mut self, queued: Queued<P>) {
        if self.entries.contains_key(&queued.intent.key) {
            return;
        }
        let key = queued.intent.key.clone();
        self.insert_pending(key, queued.intent, queued.enqueued_at, queued.seq);
    }

    /// Moves every scheduled intent that is due into the pending queue, where it
    /// counts as enqueued at its due time. Returns `Pending(n)` when it moved
    /// `n > 0` intents, else `Pending` (and wakes `cx` when one falls due or
    /// an earlier one is added).
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        let now = Instant::now();
        let mut moved = 0;
        while let Poll::Ready(Some(expired)) = self.scheduled.poll_expired(cx) {
            let key = expired.into_inner();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let Place::Scheduled { due, .. } = entry.place else {
                continue;
            };
            if due > now {
                let timer = self.scheduled.insert_at(key, due.min(now + MAX_HOP));
                entry.place = Place::Scheduled { due, timer };
                continue;
            }
            let entry = self.entries.remove(&key).expect("checked above");
            self.scheduled_counts.sub(entry.intent.reason);
            let seq = self.next_seq();
            self.insert_pending(key, entry.intent, due, seq);
            moved += 1;
        }
        if moved > 0 {
            Poll::Ready(moved)
        } else {
            Poll::Pending
        }
    }

    /// Waits until at least one scheduled intent is due, moves all that are
    /// due into the pending queue and returns how many it moved. Never returns
    /// while nothing is scheduled.
    pub async fn next_due(&mut self) -> usize {
        poll_fn(|cx| self.poll_due(cx)).await
    }

    /// Whether the key is queued (pending or scheduled).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The intent queued for the key (pending or scheduled).
    pub fn get(&self, key: &str) -> Option<&Intent<P>> {
        self.entries.get(key).map(|e| &e.intent)
    }

    /// Since when the key has been pending, if it is pending (parked or not).
    pub fn enqueued_at(&self, key: &str) -> Option<Instant> {
        match self.entries.get(key)?.place {
            Place::Pending { enqueued_at, .. } | Place::Parked { enqueued_at, .. } => {
                Some(enqueued_at)
            }
            Place::Scheduled { .. } => None,
        }
    }

    /// When the key falls due, if it is scheduled.
    pub fn due_at(&self, key: &str) -> Option<Instant> {
        match self.entries.get(key)?.place {
            Place::Pending { .. } | Place::Parked { .. } => None,
            Place::Scheduled { due, .. } => Some(due),
        }
    }

    /// Where the key is queued, found without copying or sorting anything:
    /// a hash lookup, plus for a pending key one pass that counts the pending
    /// intents ahead of it (its 1-based position in admission order, as
    /// [`pending_page`](Self::pending_page) numbers it).
    pub(crate) fn locate(&self, key: &str) -> Option<Located<'_, P>> {
        let entry = self.entries.get(key)?;
        Some(match entry.place {
            Place::Pending { enqueued_at, seq }
            | Place::Parked {
                enqueued_at, seq, ..
            } => {
                let rank = Rank::new(entry.intent.reason, enqueued_at, seq);
                // The heap's ranks sit in one vector; parked intents (few:
                // those behind a busy host or their own running scan) are
                // looked up.
                let ahead_pending = self.pending.iter().filter(|(_, r)| **r > rank).count();
                let ahead_parked = self
                    .parked
                    .values()
                    .flatten()
                    .filter_map(|k| self.entries.get(k)?.pending_rank())
                    .filter(|r| *r > rank)
                    .count();
                let ahead = ahead_pending + ahead_parked;
                Located::Pending {
                    intent: &entry.intent,
                    enqueued_at,
                    position: ahead + 1,
                }
            }
            Place::Scheduled { due, .. } => Located::Scheduled {
                intent: &entry.intent,
                due,
            },
        })
    }

    /// Number of queued keys (pending and scheduled).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of pending intents, parked ones included.
    pub fn pending_len(&self) -> usize {
        self.pending_counts.total()
    }

    /// Number of scheduled intents.
    pub fn scheduled_len(&self) -> usize {
        self.scheduled_counts.total()
    }

    /// Pending intents (parked ones included) per reason.
    pub fn pending_counts(&self) -> ReasonCounts {
        self.pending_counts
    }

    /// Scheduled intents per reason.
    pub fn scheduled_counts(&self) -> ReasonCounts {
        self.scheduled_counts
    }

    /// A page of pending intents (parked ones included) in admission order,
    /// with their enqueue time.
    pub(crate) fn pending_page(&self, offset: usize, limit: usize) -> Vec<(&Intent<P>, Instant)> {
        let mut ranked: Vec<(Rank, &Intent<P>)> = self
            .entries
            .values()
            .filter_map(|e| Some((e.pending_rank()?, &e.intent)))
            .collect();
        let by_admission = |a: &(Rank, &Intent<P>), b: &(Rank, &Intent<P>)| b.0.cmp(&a.0);
        page(
            &mut ranked,
            offset,
            offset.saturating_add(limit),
            by_admission,
        )
        .iter()
        .map(|(rank, intent)| (*intent, rank.age.0.0))
        .collect()
    }

    /// A page of scheduled intents, soonest due first, with their due time.
    pub(crate) fn scheduled_page(&self, offset: usize, limit: usize) -> Vec<(&Intent<P>, Instant)> {
        let mut due: Vec<(&Intent<P>, Instant)> = self
            .entries
            .values()
            .filter_map(|e| match e.place {
                Place::Scheduled { due, .. } => Some((&e.intent, due)),
                Place::Pending { .. } | Place::Parked { .. } => None,
            })
            .collect();
        let by_due = |a: &(&Intent<P>, Instant), b: &(&Intent<P>, Instant)| {
            a.1.cmp(&b.1).then_with(|| a.0.key.cmp(&b.0.key))
        };
        page(&mut due, offset, offset.saturating_add(limit), by_due).to_vec()
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Takes the key out of whichever place holds it.
    fn take(&mut self, key: &str) -> Option<(String, Entry<P>)> {
        let (key, entry) = self.entries.remove_entry(key)?;
        match &entry.place {
            Place::Pending { .. } => {
                self.pending.remove(&key);
                self.pending_counts.sub(entry.intent.reason);
            }
            Place::Parked { blocker, .. } => {
                if let Some(keys) = self.parked.get_mut(blocker) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.parked.remove(blocker);
                    }
                }
                self.pending_counts.sub(entry.intent.reason);
            }
            Place::Scheduled { timer, .. } => {
                self.scheduled.remove(timer);
                self.scheduled_counts.sub(entry.intent.reason);
            }
        }
        Some((key, entry))
    }

    fn insert_pending(&mut self, key: String, intent: Intent<P>, enqueued_at: Instant, seq: u64) {
        self.pending_counts.add(intent.reason);
        self.pending
            .push(key.clone(), Rank::new(intent.reason, enqueued_at, seq));
        let place = Place::Pending { enqueued_at, seq };
        self.entries.insert(key, Entry { intent, place });
    }

    fn insert_scheduled(&mut self, key: String, intent: Intent<P>, due: Instant, now: Instant) {
        self.scheduled_counts.add(intent.reason);
        let timer = self
            .scheduled
            .insert_at(key.clone(), due.min(now + MAX_HOP));
        let place = Place::Scheduled { due, timer };
        self.entries.insert(key, Entry { intent, place });
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

#[cfg(test)]
mod tests;
