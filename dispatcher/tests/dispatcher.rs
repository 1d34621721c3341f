//! Component tests of the dispatcher with a fake launcher on a paused Tokio
//! clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatcher::{
    Admitted, Config, Dispatcher, DispatcherHandle, Intent, LaunchError, Launched, Launcher,
    Lookup, RateLimit, Reason,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// Longer than any test needs; on the paused clock it costs nothing, and a
/// dispatcher that stalls fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the fake launcher does with one launch.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Returns `Running` at once; the test reports the finish.
    Hold,
    /// Returns `Running` after `latency`; the test reports the finish.
    HoldAfter(Duration),
    /// Answers after `latency`, then the scan runs for `run_for` and reports
    /// itself finished.
    Run {
        latency: Duration,
        run_for: Duration,
    },
    /// Fails after `latency`, asking for a retry after `retry_after`.
    Fail {
        latency: Duration,
        retry_after: Duration,
    },
    /// Answers `AlreadyFinished` at once.
    AlreadyDone,
}

#[derive(Debug, Clone)]
struct Launch {
    key: String,
    reason: Reason,
    payload: u32,
    waited: Duration,
    at: Instant,
}

type Planner = Box<dyn FnMut(&Admitted<u32>) -> Plan + Send>;

/// A launcher that records launches and checks the limits from the outside:
/// it counts scans from the moment their launch starts until just before it
/// reports them finished.
#[derive(Clone)]
struct Fake {
    inner: Arc<FakeInner>,
}

struct FakeInner {
    handle: DispatcherHandle<u32>,
    planner: Mutex<Planner>,
    launches: mpsc::UnboundedSender<Launch>,
    live: AtomicUsize,
    peak: AtomicUsize,
    finished: watch::Sender<usize>,
    live_hosts: Mutex<HashMap<String, BTreeSet<String>>>,
    host_overlaps: AtomicUsize,
}

impl Fake {
    fn new(
        handle: &DispatcherHandle<u32>,
        planner: impl FnMut(&Admitted<u32>) -> Plan + Send + 'static,
    ) -> (Self, mpsc::UnboundedReceiver<Launch>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = FakeInner {
            handle: handle.clone(),
            planner: Mutex::new(Box::new(planner)),
            launches: tx,
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            finished: watch::Sender::new(0),
            live_hosts: Mutex::new(HashMap::new()),
            host_overlaps: AtomicUsize::new(0),
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    fn holding(handle: &DispatcherHandle<u32>) -> (Self, mpsc::UnboundedReceiver<Launch>) {
        Self::new(handle, |_| Plan::Hold)
    }

    fn start(&self, scan: &Admitted<u32>) {
        let inner = &self.inner;
        let live = inner.live.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak.fetch_max(live, Ordering::SeqCst);
        let mut live_hosts = inner.live_hosts.lock().unwrap();
        let busy: HashSet<&String> = live_hosts.values().flatten().collect();
        if scan.intent.hosts.iter().any(|h| busy.contains(h)) {
            inner.host_overlaps.fetch_add(1, Ordering::SeqCst);
        }
        live_hosts.insert(scan.intent.key.clone(), scan.intent.hosts.clone());
    }

    fn stop(&self, key: &str) {
        self.inner.live_hosts.lock().unwrap().remove(key);
        self.inner.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reports the key's scan finished, as the Job watch would.
    fn finish(&self, key: &str) {
        self.stop(key);
        // Counted only if the dispatcher agrees, so a wrong answer stalls
        // wait_finished (and fails the test) even from a spawned task.
        assert!(self.inner.handle.finished(key), "{key} held no slot");
        self.inner.finished.send_modify(|n| *n += 1);
    }

    fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Waits until `n` scans have reported themselves finished.
    async fn wait_finished(&self, n: usize) {
        let mut finished = self.inner.finished.subscribe();
        timeout(PATIENCE, finished.wait_for(|done| *done >= n))
            .await
            .expect("scans did not finish")
            .unwrap();
    }

    fn host_overlaps(&self) -> usize {
        self.inner.host_overlaps.load(Ordering::SeqCst)
    }
}

impl Launcher<u32> for Fake {
    async fn launch(&self, scan: &Admitted<u32>) -> Result<Launched, LaunchError> {
        self.start(scan);
        let key = scan.intent.key.clone();
        let record = Launch {
            key: key.clone(),
            reason: scan.intent.reason,
            payload: scan.intent.payload,
            waited: scan.waited,
            at: Instant::now(),
        };
        let _ = self.inner.launches.send(record);
        let plan = (self.inner.planner.lock().unwrap())(scan);
        match plan {
            Plan::Hold => Ok(Launched::Running),
            Plan::HoldAfter(latency) => {
                sleep(latency).await;
                Ok(Launched::Running)
            }
            Plan::Run { latency, run_for } => {
                sleep(latency).await;
                let fake = self.clone();
                tokio::spawn(async move {
                    sleep(run_for).await;
                    fake.finish(&key);
                });
                Ok(Launched::Running)
            }
            Plan::Fail {
                latency,
                retry_after,
            } => {
                sleep(latency).await;
                self.stop(&key);
                Err(LaunchError::new(retry_after, "apiserver said no"))
            }
            Plan::AlreadyDone => {
                self.stop(&key);
                Ok(Launched::AlreadyFinished)
            }
        }
    }
}

/// A running dispatcher loop with a way to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Dispatcher<u32>>,
}

impl Running {
    async fn shut_down(self) -> Dispatcher<u32> {
        self.stop.send(()).unwrap();
        timeout(PATIENCE, self.task)
            .await
            .expect("run loop did not stop")
            .unwrap()
    }
}

fn spawn(mut dispatcher: Dispatcher<u32>, launcher: impl Launcher<u32>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        dispatcher
            .run(launcher, async {
                let _ = stopped.await;
            })
            .await;
        dispatcher
    });
    Running { stop, task }
}

fn max(n: usize) -> Config {
    Config::new(NonZeroUsize::new(n).unwrap())
}

fn per_minute(n: u32) -> RateLimit {
    RateLimit::per_minute(NonZeroU32::new(n).unwrap())
}

fn new_scan(key: &str) -> Intent<u32> {
    Intent::new(key, Reason::NewScan, 0)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Launch>) -> Launch {
    timeout(PATIENCE, rx.recv())
        .await
        .expect("no launch came")
        .expect("launcher gone")
}

/// Asserts that no launch comes within `within`.
async fn none_within(rx: &mut mpsc::UnboundedReceiver<Launch>, within: Duration) {
    if let Ok(Some(launch)) = timeout(within, rx.recv()).await {
        panic!("unexpected launch of {} at {:?}", launch.key, launch.at);
    }
}

/// Keys of every launch recorded so far.
fn drain_keys(rx: &mut mpsc::UnboundedReceiver<Launch>) -> HashSet<String> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|l| l.key)
        .collect()
}

/// Lets every task that can make progress without time passing do so.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_manual_rescan_is_launched_before_older_scheduled_and_retry_intents() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.adopt_running("busy", ["busy.example"], 0);
    handle.enqueue(Intent::new("scheduled-1", Reason::Scheduled, 0));
    sleep(Duration::from_secs(60)).await;
    handle.enqueue(Intent::new("scheduled-2", Reason::Scheduled, 0));
    handle.enqueue(Intent::new("retry", Reason::Retry, 0));
    handle.enqueue(Intent::new("manual", Reason::ManualRescan, 0));
    let _running = spawn(dispatcher, fake.clone());

    let mut order = Vec::new();
    handle.finished("busy");
    for _ in 0..4 {
        let launch = next(&mut launches).await;
        sleep(Duration::from_secs(1)).await;
        fake.finish(&launch.key);
        order.push(launch.key);
    }
    assert_eq!(order, ["manual", "scheduled-1", "scheduled-2", "retry"]);
}

#[tokio::test(start_paused = true)]
async fn reenqueueing_a_pending_key_launches_it_once_with_the_latest_intent() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.adopt_running("busy", Vec::<String>::new(), 0);
    handle.enqueue(Intent::new("web", Reason::Scheduled, 1));
    handle.enqueue(Intent::new("web", Reason::SpecChanged, 2).with_hosts(["web.example"]));
    handle.enqueue(Intent::new("web", Reason::SpecChanged, 3).with_hosts(["web.example"]));
    assert_eq!(handle.stats().pending.total(), 1);
    let _running = spawn(dispatcher, fake.clone());

    handle.finished("busy");
    let launch = next(&mut launches).await;
    assert_eq!(
        (launch.key.as_str(), launch.reason, launch.payload),
        ("web", Reason::SpecChanged, 3)
    );
    fake.finish("web");
    none_within(&mut launches, Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_intents_with_random_completion_times_never_exceed_max_concurrent() {
    const MAX: usize = 7;
    const SCANS: usize = 1_000;
    let (dispatcher, handle) = Dispatcher::new(max(MAX));
    let mut rng = StdRng::seed_from_u64(4);
    let (fake, mut launches) = Fake::new(&handle, move |_| {
        if rng.random_ratio(1, 10) {
            Plan::Fail {
                latency: Duration::from_millis(rng.random_range(0..50)),
                retry_after: Duration::from_secs(rng.random_range(1..30)),
            }
        } else {
            Plan::Run {
                latency: Duration::from_millis(rng.random_range(0..200)),
                run_for: Duration::from_millis(rng.random_range(0..5_000)),
            }
        }
    });
    let _running = spawn(dispatcher, fake.clone());

    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..SCANS {
        let reason = Reason::ALL[rng.random_range(0..Reason::ALL.len())];
        handle.enqueue(Intent::new(format!("ns/scan-{i}"), reason, 0));
        if rng.random_ratio(1, 20) {
            sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
        }
    }
    fake.wait_finished(SCANS).await;
    let launched = drain_keys(&mut launches);

    assert_eq!(launched.len(), SCANS);
    assert_eq!(fake.peak(), MAX, "the limit was exceeded or never reached");
    settle().await;
    let stats = handle.stats();
    assert_eq!(
        (
            stats.slots_used,
            stats.pending.total(),
            stats.scheduled.total()
        ),
        (0, 0, 0)
    );
    assert!(stats.launch_failures_total > 0);
    assert_eq!(
        stats.admitted_total,
        SCANS as u64 + stats.launch_failures_total
    );
}

#[tokio::test(start_paused = true)]
async fn launches_in_flight_count_against_max_concurrent() {
    let (dispatcher, handle) = Dispatcher::new(max(3));
    let slow = Plan::Run {
        latency: Duration::from_secs(10),
        run_for: Duration::from_secs(5),
    };
    let (fake, mut launches) = Fake::new(&handle, move |_| slow);
    let start = Instant::now();
    for i in 0..10 {
        handle.enqueue(new_scan(&format!("scan-{i}")));
    }
    let _running = spawn(dispatcher, fake.clone());

    for _ in 0..3 {
        assert_eq!(next(&mut launches).await.at, start);
    }
    settle().await;
    let stats = handle.stats();
    assert_eq!((stats.slots_used, stats.launching), (3, 3));
    // The fourth waits until the first launch answered and its scan finished.
    let fourth = next(&mut launches).await;
    assert_eq!(fourth.at, start + Duration::from_secs(15));
    assert_eq!(fake.peak(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_finished_scan_admits_the_next_intent_at_the_same_instant() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(new_scan("first"));
    handle.enqueue(new_scan("second"));
    let _running = spawn(dispatcher, fake.clone());
    let first = next(&mut launches).await;
    none_within(&mut launches, Duration::from_secs(42)).await;

    let finished_at = Instant::now();
    fake.finish(&first.key);
    let second = next(&mut launches).await;

    assert_eq!(second.key, "second");
    assert_eq!(second.at, finished_at);
    assert_eq!(second.waited, Duration::from_secs(42));
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_holds_in_every_one_minute_window() {
    const RATE: usize = 10;
    let (dispatcher, handle) = Dispatcher::new(max(100).with_rate_limit(per_minute(RATE as u32)));
    let (fake, mut launches) = Fake::new(&handle, |_| Plan::Run {
        latency: Duration::ZERO,
        run_for: Duration::from_secs(1),
    });
    let start = Instant::now();
    for i in 0..35 {
        handle.enqueue(new_scan(&format!("scan-{i}")));
    }
    let _running = spawn(dispatcher, fake);

    let mut times = Vec::new();
    for _ in 0..35 {
        times.push(next(&mut launches).await.at);
    }
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| **u < *t + Duration::from_secs(60))
            .count();
        assert!(
            in_window <= RATE,
            "{in_window} launches in the minute from launch {i}"
        );
    }
    // Paced exactly at the rate, not slower.
    let expected: Vec<Instant> = (0..35)
        .map(|i| start + Duration::from_secs(6 * i))
        .collect();
    assert_eq!(times, expected);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_burst_launches_that_many_at_once_then_paces_the_rest() {
    let limit = per_minute(10).with_burst(NonZeroU32::new(4).unwrap());
    let (dispatcher, handle) = Dispatcher::new(max(100).with_rate_limit(limit));
    let (fake, mut launches) = Fake::new(&handle, |_| Plan::Run {
        latency: Duration::ZERO,
        run_for: Duration::ZERO,
    });
    let start = Instant::now();
    for i in 0..8 {
        handle.enqueue(new_scan(&format!("scan-{i}")));
    }
    let _running = spawn(dispatcher, fake);

    let mut offsets = Vec::new();
    for _ in 0..8 {
        offsets.push((next(&mut launches).await.at - start).as_secs());
    }
    assert_eq!(offsets, [0, 0, 0, 0, 6, 12, 18, 24]);
}

#[tokio::test(start_paused = true)]
async fn two_scans_on_one_host_never_overlap() {
    let (dispatcher, handle) = Dispatcher::new(max(5));
    let (fake, mut launches) = Fake::holding(&handle);
    let start = Instant::now();
    handle.enqueue(new_scan("a").with_hosts(["x.example"]));
    handle.enqueue(new_scan("b").with_hosts(["y.example", "x.example"]));
    handle.enqueue(new_scan("c").with_hosts(["z.example"]));
    let _running = spawn(dispatcher, fake.clone());

    let mut first_two = [next(&mut launches).await.key, next(&mut launches).await.key];
    first_two.sort();
    assert_eq!(first_two, ["a", "c"]);
    none_within(&mut launches, Duration::from_secs(10)).await;
    fake.finish("a");
    let b = next(&mut launches).await;
    assert_eq!(
        (b.key.as_str(), b.at),
        ("b", start + Duration::from_secs(10))
    );
    assert_eq!(fake.host_overlaps(), 0);
}

#[tokio::test(start_paused = true)]
async fn random_scans_over_a_few_hosts_never_overlap_on_a_host() {
    const SCANS: usize = 300;
    let (dispatcher, handle) = Dispatcher::new(max(6));
    let mut rng = StdRng::seed_from_u64(11);
    let (fake, mut launches) = Fake::new(&handle, move |_| Plan::Run {
        latency: Duration::from_millis(rng.random_range(0..100)),
        run_for: Duration::from_millis(rng.random_range(0..3_000)),
    });
    let mut rng = StdRng::seed_from_u64(12);
    for i in 0..SCANS {
        let hosts: Vec<String> = (0..rng.random_range(1..=3))
            .map(|_| format!("host-{}.example", rng.random_range(0..12)))
            .collect();
        handle.enqueue(new_scan(&format!("scan-{i}")).with_hosts(hosts));
    }
    let _running = spawn(dispatcher, fake.clone());

    fake.wait_finished(SCANS).await;
    let launched = drain_keys(&mut launches);
    assert_eq!(launched.len(), SCANS);
    assert_eq!(fake.host_overlaps(), 0);
    assert!(
        fake.peak() > 1,
        "scans on distinct hosts should run side by side"
    );
}

#[tokio::test(start_paused = true)]
async fn an_intent_blocked_by_a_busy_host_does_not_hold_up_the_ones_behind_it() {
    let (dispatcher, handle) = Dispatcher::new(max(2));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(new_scan("a").with_hosts(["x.example"]));
    let _running = spawn(dispatcher, fake.clone());
    assert_eq!(next(&mut launches).await.key, "a");

    let start = Instant::now();
    handle.enqueue(Intent::new("manual-on-x", Reason::ManualRescan, 0).with_hosts(["x.example"]));
    handle.enqueue(Intent::new("retry-on-y", Reason::Retry, 0).with_hosts(["y.example"]));
    let behind = next(&mut launches).await;
    assert_eq!((behind.key.as_str(), behind.at), ("retry-on-y", start));

    let snapshot = handle.snapshot(10, 0);
    assert_eq!(snapshot.pending.len(), 1);
    assert!(snapshot.pending[0].blocked);

    sleep(Duration::from_secs(3)).await;
    fake.finish("a");
    let blocked = next(&mut launches).await;
    assert_eq!(
        (blocked.key.as_str(), blocked.at),
        ("manual-on-x", start + Duration::from_secs(3))
    );
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_intent_launches_when_due_and_not_before() {
    let (dispatcher, handle) = Dispatcher::new(max(2));
    let (fake, mut launches) = Fake::holding(&handle);
    let _running = spawn(dispatcher, fake);
    let start = Instant::now();
    let due = start + Duration::from_secs(30);
    let odd_due = start + Duration::from_micros(45_000_500);
    handle.enqueue_at(Intent::new("later", Reason::Scheduled, 0), due);
    handle.enqueue_at(Intent::new("odd", Reason::Retry, 0), odd_due);

    let later = next(&mut launches).await;
    assert_eq!((later.key.as_str(), later.at), ("later", due));
    let odd = next(&mut launches).await;
    assert_eq!(odd.key, "odd");
    assert!(odd.at >= odd_due, "launched {:?} early", odd_due - odd.at);
    assert!(
        odd.at - odd_due <= Duration::from_millis(1),
        "launched {:?} late",
        odd.at - odd_due
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_launch_comes_back_as_a_retry_after_its_delay() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let mut calls = 0;
    let (fake, mut launches) = Fake::new(&handle, move |_| {
        calls += 1;
        if calls == 1 {
            Plan::Fail {
                latency: Duration::from_secs(2),
                retry_after: Duration::from_secs(10),
            }
        } else {
            Plan::Hold
        }
    });
    let start = Instant::now();
    handle.enqueue(Intent::new("web", Reason::NewScan, 9));
    handle.enqueue(new_scan("other"));
    let _running = spawn(dispatcher, fake);

    let first = next(&mut launches).await;
    assert_eq!(
        (first.key.as_str(), first.reason, first.at),
        ("web", Reason::NewScan, start)
    );
    // The failure frees the slot for the next intent at once.
    let other = next(&mut launches).await;
    assert_eq!(
        (other.key.as_str(), other.at),
        ("other", start + Duration::from_secs(2))
    );
    handle.finished("other");
    let retry = next(&mut launches).await;
    assert_eq!(
        (retry.key.as_str(), retry.reason, retry.payload, retry.at),
        ("web", Reason::Retry, 9, start + Duration::from_secs(12))
    );
    assert_eq!(handle.stats().launch_failures_total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_launch_that_finds_the_scan_already_finished_frees_its_slot_at_once() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::new(&handle, |scan| {
        if scan.intent.key == "done" {
            Plan::AlreadyDone
        } else {
            Plan::Hold
        }
    });
    let start = Instant::now();
    handle.enqueue(new_scan("done"));
    handle.enqueue(new_scan("next"));
    let _running = spawn(dispatcher, fake);

    assert_eq!(next(&mut launches).await.key, "done");
    let following = next(&mut launches).await;
    assert_eq!((following.key.as_str(), following.at), ("next", start));
}

#[tokio::test(start_paused = true)]
async fn removing_pending_and_scheduled_intents_stops_them_from_launching() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(new_scan("running"));
    let _running = spawn(dispatcher, fake.clone());
    assert_eq!(next(&mut launches).await.key, "running");

    handle.enqueue(new_scan("pending"));
    handle.enqueue_at(
        new_scan("scheduled"),
        Instant::now() + Duration::from_secs(5),
    );
    assert!(handle.remove("pending"));
    assert!(handle.remove("scheduled"));
    assert!(!handle.remove("scheduled"));
    assert!(!handle.remove("never-queued"));
    fake.finish("running");

    none_within(&mut launches, Duration::from_secs(3600)).await;
    let stats = handle.stats();
    assert_eq!((stats.pending.total(), stats.scheduled.total()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn remove_does_not_affect_a_running_scan() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(new_scan("a"));
    let _running = spawn(dispatcher, fake.clone());
    assert_eq!(next(&mut launches).await.key, "a");

    assert!(!handle.remove("a"));
    handle.enqueue(new_scan("b"));
    none_within(&mut launches, Duration::from_secs(60)).await;
    assert_eq!(handle.snapshot(10, 0).running[0].key, "a");

    fake.finish("a");
    assert_eq!(next(&mut launches).await.key, "b");
}

#[tokio::test(start_paused = true)]
async fn adopted_scans_hold_slots_and_hosts_until_finished() {
    let (dispatcher, handle) = Dispatcher::new(max(2));
    let (fake, mut launches) = Fake::holding(&handle);
    assert!(handle.adopt_running("adopted-x", ["x.example"], 1));
    assert!(handle.adopt_running("adopted-plain", Vec::<String>::new(), 2));
    assert!(!handle.adopt_running("adopted-plain", Vec::<String>::new(), 2));
    handle.enqueue(new_scan("on-x").with_hosts(["x.example"]));
    handle.enqueue(new_scan("anywhere"));
    let _running = spawn(dispatcher, fake);
    none_within(&mut launches, Duration::from_secs(60)).await;

    assert!(handle.finished("adopted-plain"));
    assert_eq!(next(&mut launches).await.key, "anywhere");
    handle.finished("anywhere");
    none_within(&mut launches, Duration::from_secs(60)).await;
    assert!(handle.finished("adopted-x"));
    assert_eq!(next(&mut launches).await.key, "on-x");
}

#[tokio::test(start_paused = true)]
async fn a_key_never_runs_twice_at_once() {
    let (dispatcher, handle) = Dispatcher::new(max(3));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(Intent::new("web", Reason::Scheduled, 1));
    let _running = spawn(dispatcher, fake.clone());
    assert_eq!(next(&mut launches).await.payload, 1);

    handle.enqueue(Intent::new("web", Reason::ManualRescan, 2));
    none_within(&mut launches, Duration::from_secs(60)).await;
    fake.finish("web");
    let again = next(&mut launches).await;
    assert_eq!(
        (again.key.as_str(), again.reason, again.payload),
        ("web", Reason::ManualRescan, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_finish_reported_for_another_run_does_not_free_the_slot() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(Intent::new("web", Reason::NewScan, 2));
    handle.enqueue(new_scan("next"));
    let _running = spawn(dispatcher, fake);
    assert_eq!(next(&mut launches).await.key, "web");

    assert!(!handle.finished_run("web", &1));
    none_within(&mut launches, Duration::from_secs(60)).await;
    assert!(handle.finished_run("web", &2));
    assert_eq!(next(&mut launches).await.key, "next");
}

#[tokio::test(start_paused = true)]
async fn a_scan_reported_finished_before_its_launch_answered_does_not_keep_its_slot() {
    let (dispatcher, handle) = Dispatcher::new(max(1));
    let (fake, mut launches) = Fake::new(&handle, |scan| {
        if scan.intent.key == "fast" {
            Plan::HoldAfter(Duration::from_secs(5))
        } else {
            Plan::Hold
        }
    });
    let finisher = handle.clone();
    let start = Instant::now();
    handle.enqueue(new_scan("fast"));
    handle.enqueue(new_scan("next"));
    let _running = spawn(dispatcher, fake);

    assert_eq!(next(&mut launches).await.key, "fast");
    // As in sync mode: the scan is over before the launch call returns.
    sleep(Duration::from_secs(1)).await;
    assert!(finisher.finished("fast"));
    let following = next(&mut launches).await;
    assert_eq!(
        (following.key.as_str(), following.at),
        ("next", start + Duration::from_secs(1))
    );
    // The late answer for "fast" must not take a slot back.
    sleep(Duration::from_secs(10)).await;
    let snapshot = handle.snapshot(10, 0);
    let running: Vec<&str> = snapshot.running.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(running, ["next"]);
    assert_eq!(handle.stats().slots_used, 1);
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_pages_pending_intents_in_admission_order() {
    let limit = per_minute(30);
    let (dispatcher, handle) = Dispatcher::new(max(1).with_rate_limit(limit));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(Intent::new("running", Reason::NewScan, 7).with_hosts(["r.example"]));
    let _running = spawn(dispatcher, fake);
    assert_eq!(next(&mut launches).await.key, "running");

    let start = Instant::now();
    handle.enqueue(Intent::new("retry", Reason::Retry, 1));
    sleep(Duration::from_secs(10)).await;
    handle.enqueue(Intent::new("new-1", Reason::NewScan, 2).with_hosts(["r.example"]));
    sleep(Duration::from_secs(10)).await;
    handle.enqueue(Intent::new("new-2", Reason::NewScan, 3));
    handle.enqueue(Intent::new("manual", Reason::ManualRescan, 4));
    handle.enqueue_at(
        Intent::new("in-2h", Reason::Scheduled, 5),
        start + Duration::from_secs(7200),
    );
    handle.enqueue_at(
        Intent::new("in-1h", Reason::Scheduled, 6),
        start + Duration::from_secs(3600),
    );
    sleep(Duration::from_secs(5)).await;

    let page = handle.snapshot(2, 1);
    assert_eq!(page.limits.max_concurrent, 1);
    assert_eq!(page.limits.rate_limit, Some(limit));
    assert_eq!(
        (page.slots_used, page.pending_total, page.scheduled_total),
        (1, 4, 2)
    );
    let pending: Vec<(usize, &str, Reason, u8, Duration, bool)> = page
        .pending
        .iter()
        .map(|p| {
            (
                p.position,
                p.key.as_str(),
                p.reason,
                p.priority,
                p.waited,
                p.blocked,
            )
        })
        .collect();
    assert_eq!(
        pending,
        [
            (
                2,
                "new-1",
                Reason::NewScan,
                4,
                Duration::from_secs(15),
                true
            ),
            (
                3,
                "new-2",
                Reason::NewScan,
                4,
                Duration::from_secs(5),
                false
            ),
        ]
    );
    let waited_wall = page
        .taken_at
        .duration_since(page.pending[0].enqueued_at)
        .unwrap();
    assert_eq!(waited_wall, Duration::from_secs(15));
    // Offset 1 in the scheduled list too: only the later one.
    let scheduled: Vec<(&str, u32, Duration)> = page
        .scheduled
        .iter()
        .map(|s| (s.key.as_str(), s.payload, s.due_in))
        .collect();
    assert_eq!(scheduled, [("in-2h", 5, Duration::from_secs(7200 - 25))]);
    let running = &page.running[0];
    assert_eq!(
        (
            running.key.as_str(),
            running.reason,
            running.payload,
            running.running_for,
            running.launching
        ),
        (
            "running",
            Some(Reason::NewScan),
            7,
            Duration::from_secs(25),
            false
        )
    );

    let first = handle.snapshot(1, 0);
    assert_eq!(
        (first.pending[0].position, first.pending[0].key.as_str()),
        (1, "manual")
    );
    assert_eq!(first.scheduled[0].key, "in-1h");
    assert!(handle.snapshot(10, 4).pending.is_empty());
}

#[tokio::test(start_paused = true)]
async fn looking_up_one_scan_shows_what_the_whole_snapshot_shows_for_it() {
    let (_dispatcher, handle) = Dispatcher::new(max(1));
    let start = Instant::now();
    handle.adopt_running("running", ["busy.example"], 9);
    handle.enqueue(Intent::new("retry", Reason::Retry, 1));
    sleep(Duration::from_secs(10)).await;
    handle.enqueue(Intent::new("blocked", Reason::NewScan, 2).with_hosts(["busy.example"]));
    handle.enqueue(Intent::new("new", Reason::NewScan, 3));
    handle.enqueue(Intent::new("manual", Reason::ManualRescan, 4));
    handle.enqueue_at(
        Intent::new("later", Reason::Scheduled, 5),
        start + Duration::from_secs(3600),
    );
    // Queued again while its scan runs: reported pending, as before.
    handle.enqueue(Intent::new("running", Reason::SpecChanged, 6));
    sleep(Duration::from_secs(5)).await;

    let all = handle.snapshot(usize::MAX, 0);
    for p in &all.pending {
        let Some(Lookup::Pending(one)) = handle.lookup(&p.key) else {
            panic!("{} not pending", p.key)
        };
        assert_eq!(
            (
                one.position,
                one.reason,
                one.payload,
                one.waited,
                one.blocked
            ),
            (p.position, p.reason, p.payload, p.waited, p.blocked),
            "{}",
            p.key
        );
    }
    let positions: Vec<(&str, usize)> = all
        .pending
        .iter()
        .map(|p| (p.key.as_str(), p.position))
        .collect();
    assert_eq!(
        positions,
        [
            ("manual", 1),
            ("blocked", 2),
            ("new", 3),
            ("running", 4),
            ("retry", 5)
        ]
    );
    let Some(Lookup::Scheduled(later)) = handle.lookup("later") else {
        panic!("later not scheduled")
    };
    assert_eq!((later.payload, later.due_in), (5, all.scheduled[0].due_in));
    handle.remove("running");
    let Some(Lookup::Running(running)) = handle.lookup("running") else {
        panic!("running not running")
    };
    assert_eq!(
        (running.payload, running.running_for, running.reason),
        (9, Duration::from_secs(15), None)
    );
    assert!(handle.lookup("absent").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_looked_up_position_counts_the_intents_parked_ahead_of_it() {
    let (dispatcher, handle) = Dispatcher::new(max(2));
    let (fake, mut launches) = Fake::holding(&handle);
    handle.enqueue(new_scan("a").with_hosts(["x.example"]));
    let _running = spawn(dispatcher, fake);
    assert_eq!(next(&mut launches).await.key, "a");
    // Both wait for x.example: looked at once, then parked.
    handle.enqueue(Intent::new("manual-on-x", Reason::ManualRescan, 0).with_hosts(["x.example"]));
    handle.enqueue(new_scan("new-on-x").with_hosts(["x.example"]));
    settle().await;
    handle.enqueue(Intent::new("b", Reason::Scheduled, 0).with_hosts(["z.example"]));
    assert_eq!(next(&mut launches).await.key, "b");
    // No slot left: these stay in the pending heap.
    sleep(Duration::from_secs(1)).await;
    handle.enqueue(new_scan("c"));
    handle.enqueue(Intent::new("d", Reason::Retry, 0));
    settle().await;

    let all = handle.snapshot(usize::MAX, 0);
    let expected: Vec<(&str, usize, bool)> = all
        .pending
        .iter()
        .map(|p| (p.key.as_str(), p.position, p.blocked))
        .collect();
    assert_eq!(
        expected,
        [
            ("manual-on-x", 1, true),
            ("new-on-x", 2, true),
            ("c", 3, false),
            ("d", 4, false)
        ]
    );
    for (key, position, blocked) in expected {
        let Some(Lookup::Pending(p)) = handle.lookup(key) else {
            panic!("{key} not pending")
        };
        assert_eq!((p.position, p.blocked), (position, blocked), "{key}");
    }
}

/// A payload that counts its copies.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counted(Arc::clone(&self.0))
    }
}

#[tokio::test(start_paused = true)]
async fn looking_up_one_scan_copies_that_scan_only_however_long_the_queue() {
    for n in [10, 10_000] {
        let copies = Arc::new(AtomicUsize::new(0));
        let (_dispatcher, handle) = Dispatcher::new(max(1));
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            let intent = Intent::new(format!("ns/p{i}"), Reason::NewScan, Counted(copies.clone()));
            handle.enqueue(intent);
            let intent = Intent::new(format!("ns/s{i}"), Reason::Retry, Counted(copies.clone()));
            handle.enqueue_at(intent, later);
        }
        handle.adopt_running("ns/r", ["r.example"], Counted(copies.clone()));
        copies.store(0, Ordering::SeqCst);

        let middle = format!("ns/p{}", n / 2);
        let Some(Lookup::Pending(p)) = handle.lookup(&middle) else {
            panic!("{middle} not pending")
        };
        assert_eq!(p.position, n / 2 + 1);
        assert!(matches!(
            handle.lookup(&format!("ns/s{}", n - 1)),
            Some(Lookup::Scheduled(_))
        ));
        assert!(matches!(handle.lookup("ns/r"), Some(Lookup::Running(_))));
        assert!(handle.lookup("ns/absent").is_none());
        assert_eq!(copies.load(Ordering::SeqCst), 3, "n = {n}");

        // What the single-scan page cost before: a copy of everything.
        copies.store(0, Ordering::SeqCst);
        drop(handle.snapshot(usize::MAX, 0));
        assert_eq!(copies.load(Ordering::SeqCst), 2 * n + 1, "n = {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn stats_count_queue_depth_by_reason() {
    let (_dispatcher, handle) = Dispatcher::new(max(1));
    let later = Instant::now() + Duration::from_secs(60);
    handle.enqueue(Intent::new("a", Reason::NewScan, 0));
    handle.enqueue(Intent::new("b", Reason::NewScan, 0));
    handle.enqueue(Intent::new("c", Reason::Recovered, 0));
    handle.enqueue_at(Intent::new("d", Reason::Retry, 0), later);
    handle.adopt_running("e", ["e.example"], 0);

    let stats = handle.stats();
    assert_eq!(stats.pending.get(Reason::NewScan), 2);
    assert_eq!(stats.pending.get(Reason::Recovered), 1);
    assert_eq!(stats.pending.get(Reason::ManualRescan), 0);
    assert_eq!(stats.scheduled.get(Reason::Retry), 1);
    assert_eq!(
        (stats.slots_used, stats.launching, stats.max_concurrent),
        (1, 0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_requeues_launches_in_flight_and_the_loop_can_run_again() {
    let (dispatcher, handle) = Dispatcher::new(max(2));
    let (stuck, mut stuck_launches) =
        Fake::new(&handle, |_| Plan::HoldAfter(Duration::from_secs(3600)));
    handle.enqueue(Intent::new("web", Reason::SpecChanged, 5));
    let running = spawn(dispatcher, stuck);
    assert_eq!(next(&mut stuck_launches).await.key, "web");
    assert_eq!(handle.stats().launching, 1);

    let dispatcher = running.shut_down().await;
    let stats = handle.stats();
    assert_eq!(
        (stats.slots_used, stats.pending.get(Reason::SpecChanged)),
        (0, 1)
    );
    // Enqueued while no loop runs: kept for the next run.
    handle.enqueue(new_scan("queued-meanwhile"));
    none_within(&mut stuck_launches, Duration::from_secs(7200)).await;

    let (fake, mut launches) = Fake::holding(&handle);
    let _running = spawn(dispatcher, fake);
    let mut relaunched = [next(&mut launches).await, next(&mut launches).await];
    relaunched.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        relaunched.map(|l| (l.key, l.reason, l.payload)),
        [
            ("queued-meanwhile".to_owned(), Reason::NewScan, 0),
            ("web".to_owned(), Reason::SpecChanged, 5)
        ]
    );
}
