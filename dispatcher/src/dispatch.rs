//! The dispatcher: a cloneable handle that feeds the queue, and one run loop
//! that admits intents and calls the [`Launcher`].

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Config, RateLimit, Running};
use crate::queue::{Blocker, Enqueued, Intent, Located, Reason, ReasonCounts, ScanQueue};

/// Shortest retry delay after a failed launch, so a launcher that fails at
/// once with a zero delay cannot spin the run loop.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// An intent the dispatcher admitted, as handed to the [`Launcher`].
#[derive(Debug, Clone)]
pub struct Admitted<P> {
    /// The intent to carry out.
    pub intent: Intent<P>,
    /// How long it waited in the pending queue (for a queue-wait metric).
    pub waited: Duration,
}

/// How a launch went when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launched {
    /// The scan runs (or already ran from an earlier attempt and still
    /// does); its slot is held until [`DispatcherHandle::finished`].
    Running,
    /// The scan has already run to completion (for example an existing Job
    /// that has finished); its slot is freed at once.
    AlreadyFinished,
}

/// A failed launch. The intent comes back as a [`Reason::Retry`] after
/// `retry_after` (at least [`MIN_RETRY_DELAY`]), unless its key was queued
/// again meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("scan launch failed; retrying in {retry_after:?}")]
pub struct LaunchError {
    /// How long to wait before the retry.
    pub retry_after: Duration,
    /// What went wrong.
    #[source]
    pub source: Box<dyn StdError + Send + Sync>,
}

impl LaunchError {
    /// A failure to retry after `retry_after`.
    pub fn new(retry_after: Duration, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            retry_after,
            source: source.into(),
        }
    }
}

/// Starts scans. The operator implements it twice: a Kubernetes Job launcher
/// and an in-process launcher for sync mode.
///
/// Launches run concurrently with each other and with the run loop; each one
/// holds a slot from admission on. A launch may be cancelled (dropped) when
/// the run loop shuts down; its intent is then queued again, so launching
/// must be idempotent (deterministic Job names make it so).
pub trait Launcher<P>: Send + Sync + 'static {
    /// Starts the scan. `Ok` keeps its slot until the scan is reported
    /// finished (unless [`Launched::AlreadyFinished`]); `Err` frees the slot
    /// and retries later.
    fn launch(
        &self,
        scan: &Admitted<P>,
    ) -> impl Future<Output = Result<Launched, LaunchError>> + Send;
}

impl<P, L: Launcher<P>> Launcher<P> for Arc<L> {
    fn launch(
        &self,
        scan: &Admitted<P>,
    ) -> impl Future<Output = Result<Launched, LaunchError>> + Send {
        (**self).launch(scan)
    }
}

/// The limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most scans at once.
    pub max_concurrent: usize,
    /// Launch rate limit, if any.
    pub rate_limit: Option<RateLimit>,
}

/// A pending intent, as shown on the queue page.
#[derive(Debug, Clone)]
pub struct PendingItem<P> {
    /// 1-based place in admission order over the whole pending queue.
    pub position: usize,
    /// Scan key.
    pub key: String,
    /// Why the scan is wanted.
    pub reason: Reason,
    /// [`Reason::priority`]: higher goes first.
    pub priority: u8,
    /// Hosts the scan targets.
    pub hosts: BTreeSet<String>,
    /// Caller data.
    pub payload: P,
    /// When it became pending.
    pub enqueued_at: SystemTime,
    /// How long it has waited so far.
    pub waited: Duration,
    /// It waits for its own running scan or for a busy host, so intents
    /// behind it may go first.
    pub blocked: bool,
}

/// A scheduled intent (scheduled rescan or retry), as shown on the queue page.
#[derive(Debug, Clone)]
pub struct ScheduledItem<P> {
    /// Scan key.
    pub key: String,
    /// Why the scan is wanted once due.
    pub reason: Reason,
    /// Hosts the scan targets.
    pub hosts: BTreeSet<String>,
    /// Caller data.
    pub payload: P,
    /// When it falls due.
    pub due_at: SystemTime,
    /// Time left until then.
    pub due_in: Duration,
}

/// A scan holding a slot, as shown on the queue page.
#[derive(Debug, Clone)]
pub struct RunningItem<P> {
    /// Scan key.
    pub key: String,
    /// Why it was admitted; `None` for a scan adopted at start-up.
    pub reason: Option<Reason>,
    /// Hosts it holds.
    pub hosts: BTreeSet<String>,
    /// Caller data.
    pub payload: P,
    /// When it was admitted (or adopted).
    pub started_at: SystemTime,
    /// How long it has held its slot.
    pub running_for: Duration,
    /// The launcher has not answered yet.
    pub launching: bool,
}

/// The state of the dispatcher for the `/queue` page. Times are converted to
/// wall-clock time when the snapshot is taken.
#[derive(Debug, Clone)]
pub struct Snapshot<P> {
    /// When the snapshot was taken.
    pub taken_at: SystemTime,
    /// The limits in force.
    pub limits: Limits,
    /// Slots held (running scans plus launches in flight).
    pub slots_used: usize,
    /// Number of pending intents in all.
    pub pending_total: usize,
    /// The requested page of pending intents, in admission order.
    pub pending: Vec<PendingItem<P>>,
    /// Number of scheduled intents in all.
    pub scheduled_total: usize,
    /// The requested page of scheduled intents, soonest due first.
    pub scheduled: Vec<ScheduledItem<P>>,
    /// Every scan holding a slot, longest running first.
    pub running: Vec<RunningItem<P>>,
}

/// One scan as [`DispatcherHandle::lookup`] finds it.
#[derive(Debug, Clone)]
pub enum Lookup<P> {
    /// Pending to run (possibly blocked), at its position in admission order.
    Pending(PendingItem<P>),
    /// Waiting until it falls due.
    Scheduled(ScheduledItem<P>),
    /// Holding a slot.
    Running(RunningItem<P>),
}

/// Converts the dispatcher's clock to wall-clock time, for one reading.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    now: Instant,
    wall_now: SystemTime,
}

impl Clocks {
    fn read() -> Self {
        Self {
            now: Instant::now(),
            wall_now: SystemTime::now(),
        }
    }

    fn wall(self, t: Instant) -> SystemTime {
        if t <= self.now {
            self.wall_now - (self.now - t)
        } else {
            self.wall_now + (t - self.now)
        }
    }

    fn pending<P: Clone>(
        self,
        admission: &Admission<P>,
        intent: &Intent<P>,
        enqueued_at: Instant,
        position: usize,
    ) -> PendingItem<P> {
        PendingItem {
            position,
            key: intent.key.clone(),
            reason: intent.reason,
            priority: intent.reason.priority(),
            hosts: intent.hosts.clone(),
            payload: intent.payload.clone(),
            enqueued_at: self.wall(enqueued_at),
            waited: self.now.saturating_duration_since(enqueued_at),
            blocked: admission.blocker(intent).is_some(),
        }
    }

    fn scheduled<P: Clone>(self, intent: &Intent<P>, due: Instant) -> ScheduledItem<P> {
        ScheduledItem {
            key: intent.key.clone(),
            reason: intent.reason,
            hosts: intent.hosts.clone(),
            payload: intent.payload.clone(),
            due_at: self.wall(due),
            due_in: due.saturating_duration_since(self.now),
        }
    }

    fn running<P: Clone>(self, key: &str, run: &Running<P>) -> RunningItem<P> {
        let running_for = self.now.saturating_duration_since(run.started_at);
        RunningItem {
            key: key.to_owned(),
            reason: run.reason,
            hosts: run.hosts.clone(),
            payload: run.payload.clone(),
            started_at: self
                .wall_now
                .checked_sub(running_for)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            running_for,
            launching: run.launching,
        }
    }
}

/// Counters for metrics; cheap to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Pending intents per reason.
    pub pending: ReasonCounts,
    /// Scheduled intents per reason.
    pub scheduled: ReasonCounts,
    /// Slots held (running scans plus launches in flight).
    pub slots_used: usize,
    /// Launches in flight.
    pub launching: usize,
    /// The concurrency limit.
    pub max_concurrent: usize,
    /// Intents admitted since start.
    pub admitted_total: u64,
    /// Launches that failed since start.
    pub launch_failures_total: u64,
}

struct State<P> {
    queue: ScanQueue<P>,
    admission: Admission<P>,
    admitted_total: u64,
    launch_failures_total: u64,
}

struct Shared<P> {
    state: Mutex<State<P>>,
    wake: Notify,
}

impl<P> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        // The state is kept consistent between statements, so a panic
        // elsewhere while holding the lock does not leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Feeds and inspects the dispatcher; cheap to clone. Its methods do not
/// wait for the run loop: they work (and the queue fills) even while the
/// loop is not running, e.g. on a replica that is not the leader. Call them
/// from inside a Tokio runtime.
pub struct DispatcherHandle<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for DispatcherHandle<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P> std::fmt::Debug for DispatcherHandle<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherHandle").finish_non_exhaustive()
    }
}

impl<P: Clone + Send + Sync + 'static> DispatcherHandle<P> {
    /// Queues the intent to run as soon as admission allows. Replaces any
    /// intent queued for its key (pending or scheduled); a pending key keeps its
    /// original enqueue time. A key whose scan is running stays queued until
    /// that scan is reported finished.
    pub fn enqueue(&self, intent: Intent<P>) -> Enqueued {
        let result = self.shared.lock().queue.enqueue(intent);
        self.shared.wake.notify_one();
        result
    }

    /// Queues the intent to become pending at `due`, replacing any intent
    /// queued for its key. A past `due` makes it pending now.
    pub fn enqueue_at(&self, intent: Intent<P>, due: Instant) -> Enqueued {
        let result = self.shared.lock().queue.enqueue_at(intent, due);
        self.shared.wake.notify_one();
        result
    }

    /// Drops the key from the pending or the delay queue. A running scan of
    /// the key is not affected. Returns whether something was queued.
    pub fn remove(&self, key: &str) -> bool {
        self.shared.lock().queue.remove(key).is_some()
    }

    /// Reports that the key's scan finished, freeing its slot and hosts; the
    /// next intent is admitted at once. Returns whether the key held a slot.
    ///
    /// Events about an older run (a replayed watch event for the previous
    /// Job, say) would free the current run's slot: prefer
    /// [`finished_run`](Self::finished_run) where the payload tells runs apart.
    pub fn finished(&self, key: &str) -> bool {
        let freed = self.shared.lock().release(key).is_some();
        if freed {
            self.shared.wake.notify_one();
        }
        freed
    }

    /// Like [`finished`](Self::finished), but only if the key's current run
    /// carries `payload`.
    pub fn finished_run(&self, key: &str, payload: &P) -> bool
    where
        P: PartialEq,
    {
        let freed = {
            let mut state = self.shared.lock();
            let current = state
                .admission
                .get(key)
                .is_some_and(|r| r.payload == *payload);
            current && state.release(key).is_some()
        };
        if freed {
            self.shared.wake.notify_one();
        }
        freed
    }

    /// Records a scan that is already running (found at start-up): it holds
    /// a slot and its hosts until reported finished, even if that puts the
    /// slots over the limit. Returns `false` (and changes nothing) if the key
    /// already holds a slot.
    pub fn adopt_running<H: Into<String>>(
        &self,
        key: impl Into<String>,
        hosts: impl IntoIterator<Item = H>,
        payload: P,
    ) -> bool {
        let key = key.into();
        let hosts = hosts.into_iter().map(Into::into).collect();
        let mut state = self.shared.lock();
        if state.admission.is_running(&key) {
            return false;
        }
        debug!(scan = %key, "adopted running scan");
        state.admission.hold(key, hosts, None, payload, false);
        true
    }

    /// The queue page: `limit` pending and `limit` scheduled intents starting at
    /// `offset` in each list, every running scan, limits and totals. Only
    /// the page is copied; finding it still looks at every queued intent.
    pub fn snapshot(&self, limit: usize, offset: usize) -> Snapshot<P> {
        let state = self.shared.lock();
        let clocks = Clocks::read();
        let admission = &state.admission;
        let pending = state
            .queue
            .pending_page(offset, limit)
            .into_iter()
            .enumerate()
            .map(|(i, (intent, enqueued_at))| {
                clocks.pending(admission, intent, enqueued_at, offset + i + 1)
            })
            .collect();
        let scheduled = state
            .queue
            .scheduled_page(offset, limit)
            .into_iter()
            .map(|(intent, due)| clocks.scheduled(intent, due))
            .collect();
        let running = running_items(admission, clocks);
        let config = admission.config();
        Snapshot {
            taken_at: clocks.wall_now,
            limits: Limits {
                max_concurrent: config.max_concurrent.get(),
                rate_limit: config.rate_limit,
            },
            slots_used: admission.slots_used(),
            pending_total: state.queue.pending_len(),
            pending,
            scheduled_total: state.queue.scheduled_len(),
            scheduled,
            running,
        }
    }

    /// One scan: pending, scheduled or running, in that order of precedence
    /// (a key queued again while its scan runs is reported pending), as the
    /// [`snapshot`](Self::snapshot) would show it. Copies only that scan;
    /// a pending scan's position costs one pass over the pending intents that
    /// counts, without copying or sorting.
    pub fn lookup(&self, key: &str) -> Option<Lookup<P>> {
        let state = self.shared.lock();
        let clocks = Clocks::read();
        match state.queue.locate(key) {
            Some(Located::Pending {
                intent,
                enqueued_at,
                position,
            }) => Some(Lookup::Pending(clocks.pending(
                &state.admission,
                intent,
                enqueued_at,
                position,
            ))),
            Some(Located::Scheduled { intent, due }) => {
                Some(Lookup::Scheduled(clocks.scheduled(intent, due)))
            }
            None => {
                let run = state.admission.get(key)?;
                Some(Lookup::Running(clocks.running(key, run)))
            }
        }
    }

    /// Every scan holding a slot, longest running first (the `running` part
    /// of a [`snapshot`](Self::snapshot), without the queue pages).
    pub fn running(&self) -> Vec<RunningItem<P>> {
        let state = self.shared.lock();
        running_items(&state.admission, Clocks::read())
    }

    /// Whether `key` holds a slot (running, or its launch in flight).
    pub fn is_running(&self, key: &str) -> bool {
        self.shared.lock().admission.is_running(key)
    }

    /// Counters for metrics: queue depth per reason, slots, totals.
    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats {
            pending: state.queue.pending_counts(),
            scheduled: state.queue.scheduled_counts(),
            slots_used: state.admission.slots_used(),
            launching: state.admission.runs().filter(|(_, r)| r.launching).count(),
            max_concurrent: state.admission.config().max_concurrent.get(),
            admitted_total: state.admitted_total,
            launch_failures_total: state.launch_failures_total,
        }
    }
}

/// The scans holding slots at the clocks' reading, longest running first.
fn running_items<P: Clone>(admission: &Admission<P>, clocks: Clocks) -> Vec<RunningItem<P>> {
    let mut running: Vec<RunningItem<P>> = admission
        .runs()
        .map(|(key, run)| clocks.running(key, run))
        .collect();
    running.sort_by(|a, b| {
        b.running_for
            .cmp(&a.running_for)
            .then_with(|| a.key.cmp(&b.key))
    });
    running
}

/// Owns the run loop. Build it with [`Dispatcher::new`], hand the
/// [`DispatcherHandle`] to whoever enqueues, and run the loop where this
/// replica leads.
pub struct Dispatcher<P> {
    shared: Arc<Shared<P>>,
}

impl<P> std::fmt::Debug for Dispatcher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

struct LaunchDone<P> {
    ticket: u64,
    admitted: Admitted<P>,
    result: Result<Launched, LaunchError>,
}

impl<P: Clone + Send + Sync + 'static> Dispatcher<P> {
    /// A dispatcher with an empty queue. Call it inside the Tokio runtime
    /// that will run it.
    pub fn new(config: Config) -> (Self, DispatcherHandle<P>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: ScanQueue::new(),
                admission: Admission::new(config),
                admitted_total: 0,
                launch_failures_total: 0,
            }),
            wake: Notify::new(),
        });
        let handle = DispatcherHandle {
            shared: Arc::clone(&shared),
        };
        (Self { shared }, handle)
    }

    /// Another handle.
    pub fn handle(&self) -> DispatcherHandle<P> {
        DispatcherHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Admits intents and launches them until `shutdown` completes. It wakes
    /// only on events (enqueue, finished, launch result, a scheduled intent or
    /// a rate-limit token falling due), never on a polling interval.
    ///
    /// On shutdown, launches still in flight are dropped and their intents
    /// queued again; running scans keep their slots. The queue lives on in
    /// the handles, so `run` may be called again (say, on regaining
    /// leadership).
    #[tracing::instrument(name = "dispatcher", skip_all)]
    pub async fn run<L: Launcher<P>>(&mut self, launcher: L, shutdown: impl Future<Output = ()>) {
        let launcher = Arc::new(launcher);
        let shared = &*self.shared;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut in_flight = FuturesUnordered::new();
        info!("dispatcher started");
        loop {
            let (launches, rate_wait) = shared.lock().admit();
            for (ticket, admitted) in launches {
                in_flight.push(launch_one(Arc::clone(&launcher), ticket, admitted));
            }
            // notify_one leaves a permit when nobody is waiting, so a wake-up
            // between the admit above and the select below is not lost.
            let notified = shared.wake.notified();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    shared.lock().launch_done(done);
                }
                () = notified => {}
                _ = poll_fn(|cx| shared.lock().queue.poll_due(cx)) => {}
                () = tokio::time::sleep(rate_wait.unwrap_or_default()), if rate_wait.is_some() => {}
            }
        }
        drop(in_flight);
        let requeued = shared.lock().requeue_launching();
        info!(requeued, "dispatcher stopped");
    }
}

async fn launch_one<P, L: Launcher<P>>(
    launcher: Arc<L>,
    ticket: u64,
    admitted: Admitted<P>,
) -> LaunchDone<P> {
    let result = launcher.launch(&admitted).await;
    LaunchDone {
        ticket,
        admitted,
        result,
    }
}

impl<P: Clone> State<P> {
    /// Admits pending intents while a slot is free, a token is available and
    /// an intent is not blocked. Returns what to launch, and how long until
    /// the next token if the rate limit stopped admission.
    fn admit(&mut self) -> (Vec<(u64, Admitted<P>)>, Option<Duration>) {
        let mut launches = Vec::new();
        while self.admission.has_free_slot() {
            let admission = &self.admission;
            let Some(queued) = self.queue.pop_first(|intent| admission.blocker(intent)) else {
                break;
            };
            if let Err(wait) = self.admission.take_token() {
                self.queue.restore(queued);
                return (launches, Some(wait));
            }
            let intent = queued.intent;
            let waited = queued.enqueued_at.elapsed();
            let ticket = self.admission.hold(
                intent.key.clone(),
                intent.hosts.clone(),
                Some(intent.reason),
                intent.payload.clone(),
                true,
            );
            self.admitted_total += 1;
            debug!(scan = %intent.key, reason = %intent.reason, ?waited, "admitted");
            launches.push((ticket, Admitted { intent, waited }));
        }
        (launches, None)
    }

    /// Frees the key's slot and hosts and unparks the intents they blocked.
    fn release(&mut self, key: &str) -> Option<Running<P>> {
        let run = self.admission.release(key)?;
        self.queue.unpark(&Blocker::Key(key.to_owned()));
        for host in &run.hosts {
            self.queue.unpark(&Blocker::Host(host.clone()));
        }
        Some(run)
    }

    fn launch_done(&mut self, done: LaunchDone<P>) {
        let LaunchDone {
            ticket,
            admitted,
            result,
        } = done;
        let key = admitted.intent.key.as_str();
        // A different ticket (or none) means the run was reported finished
        // while the launch was in flight; its result no longer owns a slot.
        let current = self.admission.get(key).is_some_and(|r| r.ticket == ticket);
        match result {
            Ok(Launched::Running) if current => {
                if let Some(run) = self.admission.get_mut(key) {
                    run.launching = false;
                }
                info!(scan = %key, reason = %admitted.intent.reason, "scan launched");
            }
            Ok(Launched::AlreadyFinished) if current => {
                self.release(key);
                info!(scan = %key, "scan had already finished");
            }
            Ok(_) => debug!(scan = %key, "launch answered after the scan was reported finished"),
            Err(err) => {
                self.launch_failures_total += 1;
                if current {
                    self.release(key);
                }
                let retry_after = err.retry_after.max(MIN_RETRY_DELAY);
                warn!(scan = %key, error = %err.source, ?retry_after, "scan launch failed");
                // A newer intent for the key supersedes the retry.
                if !self.queue.contains(key) && !self.admission.is_running(key) {
                    let mut intent = admitted.intent;
                    intent.reason = Reason::Retry;
                    self.queue.enqueue_at(intent, Instant::now() + retry_after);
                }
            }
        }
    }

    /// Frees the slots of launches cancelled by shutdown and queues their
    /// intents again (unless their key was queued meanwhile).
    fn requeue_launching(&mut self) -> usize {
        let keys: Vec<String> = self
            .admission
            .runs()
            .filter(|(_, r)| r.launching)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            let Some(run) = self.release(key) else {
                continue;
            };
            if !self.queue.contains(key) {
                self.queue.enqueue(Intent {
                    key: key.clone(),
                    reason: run.reason.unwrap_or(Reason::Recovered),
                    hosts: run.hosts,
                    payload: run.payload,
                });
            }
        }
        keys.len()
    }
}
