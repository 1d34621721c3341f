//! What a completed run found new, told once: the `NewFindings` Event on
//! the scan and its source, and messages to webhook notifiers (Slack,
//! Teams, or a generic JSON endpoint).
//!
//! The scan reconciler hands each scan it sees to [`Notifications::due`];
//! a run not yet announced ([`news::News`] newer than `status.announcedRun`
//! and than what this process already took up) is announced: the Event at
//! once, the messages in a background task that retries
//! ([`deliver::Poster`]) and then records `status.announcedRun`, so that a
//! restarted operator does not announce it again (and does announce a run
//! that finished while none ran). Scanning never waits for a message.
//!
//! Notifiers are Secrets labelled [`crate::api::labels::NOTIFIER_LABEL`],
//! watched next to the announcer ([`start`]): one in the operator's
//! namespace hears of every scan, one elsewhere (with `NOTIFIERS=all`) of
//! its own namespace's scans.

pub mod deliver;
pub mod news;
pub mod notifier;
pub mod payload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{NucleiScan, ScanKey};
use crate::metrics::Metrics;
use crate::scan::status::{chrono, patch_status, time};
use crate::settings::{NotifierScope, Settings};
use crate::suppress::controller::Exceptions;
use deliver::Poster;
use news::News;
use notifier::Notifier;

/// Most scans remembered as announced; past it the memory starts again
/// (`status.announcedRun` still holds).
const MAX_REMEMBERED: usize = 100_000;
/// Most announcements waiting or being sent; more are dropped (counted).
const MAX_IN_FLIGHT: usize = 1_000;
/// Messages sent at once.
const SENDING: usize = 4;
/// Longest an announcement waits for the exceptions to be listed.
const EXCEPTIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The runs this process took up to announce: scan uid → the last run's
/// `lastSuccessTime` (ms).
#[derive(Debug, Default)]
struct Taken(HashMap<String, i64>);

impl Taken {
    /// Takes up `run` of scan `uid` unless it is not newer than the run
    /// recorded as announced (`status.announcedRun`) or one taken before.
    fn take(&mut self, uid: &str, run: i64, recorded: i64) -> bool {
        if run <= recorded || self.0.get(uid).is_some_and(|t| run <= *t) {
            return false;
        }
        if self.0.len() >= MAX_REMEMBERED && !self.0.contains_key(uid) {
            self.0.clear();
        }
        self.0.insert(uid.to_string(), run);
        true
    }

    /// Gives `run` of `uid` back, when it could not be announced.
    fn forget(&mut self, uid: &str, run: i64) {
        if self.0.get(uid) == Some(&run) {
            self.0.remove(uid);
        }
    }
}

/// Announces runs' news.
pub struct Notifications {
    client: kube::Client,
    /// Notifier Secrets; `None` with `NOTIFIERS=off`.
    secrets: Option<Store<Secret>>,
    operator_namespace: String,
    poster: Poster,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    taken: Mutex<Taken>,
    in_flight: Arc<AtomicUsize>,
    sending: Arc<Semaphore>,
    /// Accepted findings, left out of the news; the scan reconciler tells
    /// it of each scan it sees.
    pub exceptions: Arc<Exceptions>,
}

impl Notifications {
    pub fn new(
        client: kube::Client,
        settings: &Settings,
        secrets: Option<Store<Secret>>,
        poster: Poster,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        exceptions: Arc<Exceptions>,
    ) -> Self {
        Notifications {
            exceptions,
            client,
            secrets,
            operator_namespace: settings.lease_namespace().to_string(),
            poster,
            metrics,
            recorder,
            taken: Mutex::default(),
            in_flight: Arc::default(),
            sending: Arc::new(Semaphore::new(SENDING)),
        }
    }

    /// The news of `scan`'s last run if it was not announced yet, read
    /// from the API server (the cache holds scans without their findings);
    /// from here on the run counts as taken up by this process. A scan
    /// whose counts show nothing new or resolved is not fetched.
    pub async fn due(&self, scan: &NucleiScan) -> Option<News> {
        let run = News::worth_reading(scan)?.timestamp_millis();
        let uid = scan.uid()?;
        let recorded = scan
            .status
            .as_ref()
            .and_then(|s| s.announced_run.as_ref())
            .map_or(i64::MIN, |t| chrono(t).timestamp_millis());
        if !self
            .taken
            .lock()
            .expect("taken lock")
            .take(&uid, run, recorded)
        {
            return None;
        }
        let api: Api<NucleiScan> =
            Api::namespaced(self.client.clone(), &scan.namespace().unwrap_or_default());
        match api.get(&scan.name_any()).await {
            // The same run, unless another finished meanwhile (then its own
            // reconcile announces it), without what an exception accepts:
            // that is not news.
            Ok(whole) => {
                // After a restart, not before the exceptions are listed.
                if !self.exceptions.known(EXCEPTIONS_WAIT).await {
                    warn!(scan = %ScanKey::of(scan), "NucleiFindingExceptions not listed after {EXCEPTIONS_WAIT:?}: announcing without them");
                }
                let rules = self
                    .exceptions
                    .rules(&whole.namespace().unwrap_or_default(), chrono::Utc::now());
                News::of(&whole)
                    .filter(|n| n.run.timestamp_millis() == run)
                    .map(|n| n.without_accepted(&rules))
            }
            Err(e) => {
                // Not taken after all: the next reconcile tries again.
                self.taken.lock().expect("taken lock").forget(&uid, run);
                debug!(scan = %ScanKey::of(scan), "reading the scan's findings: {e}");
                None
            }
        }
    }

    /// The valid notifiers that hear of `scan` and want `news`.
    fn notifiers_for(&self, scan: &NucleiScan, news: &News) -> Vec<Notifier> {
        let Some(secrets) = &self.secrets else {
            return Vec::new();
        };
        let namespace = scan.namespace().unwrap_or_default();
        let mut found: Vec<Notifier> = secrets
            .state()
            .iter()
            .filter_map(|s| Notifier::from_secret(s).ok())
            .filter(|n| n.covers(&namespace, &self.operator_namespace) && n.wants(news))
            .collect();
        found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        found
    }

    /// Sends `news` of `scan` to its notifiers in the background, then
    /// records the run as announced; when only the Event told of it
    /// (`told`), records it at once, so that it is not told again after a
    /// restart. Nothing is written when nobody was told. Past
    /// `MAX_IN_FLIGHT` the messages are dropped (counted) and the run is
    /// not recorded: the next operator process tells it again.
    pub async fn send(self: &Arc<Self>, scan: &NucleiScan, news: News, told: bool) {
        let notifiers = self.notifiers_for(scan, &news);
        if notifiers.is_empty() {
            if told {
                self.record(scan, &news).await;
            }
            return;
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            for n in &notifiers {
                self.metrics.notified(n.kind.as_str(), "dropped");
            }
            warn!(scan = %ScanKey::of(scan), "too many notifications waiting; this run's are dropped");
            return;
        }
        let (this, scan) = (self.clone(), scan.clone());
        tokio::spawn(async move {
            let sent =
                futures::future::join_all(notifiers.iter().map(|n| this.deliver(n, &scan, &news)));
            sent.await;
            this.record(&scan, &news).await;
            this.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Sends one message; a failure is counted, logged and told in a
    /// `NotificationFailed` Event on the scan.
    async fn deliver(&self, n: &Notifier, scan: &NucleiScan, news: &News) {
        let body = payload::body(n, scan, news).to_string();
        let kind = n.kind.as_str();
        let result = {
            let _permit = self.sending.acquire().await;
            self.poster
                .post(&n.url, body.into(), || {
                    self.metrics.notified(kind, "retried")
                })
                .await
        };
        let key = ScanKey::of(scan);
        match result {
            Ok(()) => {
                self.metrics.notified(kind, "delivered");
                info!(scan = %key, notifier = %format!("{}/{}", n.namespace, n.name), "notified");
            }
            Err(e) => {
                self.metrics.notified(kind, "failed");
                let note = format!(
                    "notifier Secret {}/{} ({kind}) was not told of this run: {e}",
                    n.namespace, n.name
                );
                warn!(scan = %key, "{note}");
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "NotificationFailed".into(),
                    note: Some(crate::events::note(&note)),
                    action: "Notify".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &scan.object_ref(&())).await {
                    debug!("event NotificationFailed not recorded: {e}");
                }
            }
        }
    }

    /// Writes `status.announcedRun`.
    async fn record(&self, scan: &NucleiScan, news: &News) {
        let api: Api<NucleiScan> =
            Api::namespaced(self.client.clone(), &scan.namespace().unwrap_or_default());
        let status = json!({ "announcedRun": time(news.run) });
        if let Err(e) = patch_status(&api, &scan.name_any(), None, status).await {
            debug!(scan = %ScanKey::of(scan), "announcedRun not recorded: {e}");
        }
    }
}

/// The announcer the scan reconciler uses, and the watch of notifier
/// Secrets to run next to it (none with `NOTIFIERS=off`).
pub fn start(
    client: &kube::Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    reporter: &Reporter,
    exceptions: Arc<Exceptions>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(
    Arc<Notifications>,
    Option<impl Future<Output = ()> + Send + 'static>,
)> {
    let events = crate::events::NotedEvents::new(client.clone(), reporter.clone());
    let (secrets, task) = match watch(client, settings, events, shutdown.clone()) {
        Some((store, task)) => (Some(store), Some(task)),
        None => (None, None),
    };
    let poster = Poster::new(deliver::Retry::default()).map_err(|e| {
        anyhow::anyhow!("loading the system's CA certificates for notifications: {e}")
    })?;
    let notify = Notifications::new(
        client.clone(),
        settings,
        secrets,
        poster,
        metrics.clone(),
        Recorder::new(client.clone(), reporter.clone()),
        exceptions,
    );
    Ok((Arc::new(notify), task))
}

/// Watches notifier Secrets as `settings.notifiers` says; an invalid one
/// gets an `InvalidNotifier` Event saying what to fix. `None` with
/// `NOTIFIERS=off`.
fn watch(
    client: &kube::Client,
    settings: &Settings,
    events: crate::events::NotedEvents,
    shutdown: CancellationToken,
) -> Option<(Store<Secret>, impl Future<Output = ()> + Send + 'static)> {
    let api: Api<Secret> = match settings.notifiers {
        NotifierScope::Off => return None,
        NotifierScope::Operator => Api::namespaced(client.clone(), settings.lease_namespace()),
        NotifierScope::All => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let stream = watcher(
        api,
        watcher::Config::default().labels(crate::api::labels::NOTIFIER_LABEL),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    let task = async move {
        let mut stream = std::pin::pin!(stream.take_until(shutdown.cancelled_owned()));
        while let Some(item) = stream.next().await {
            let secret = match item {
                Ok(s) => s,
                Err(e) => {
                    warn!("watching notifier Secrets: {e}");
                    continue;
                }
            };
            if let Err(problem) = Notifier::from_secret(&secret) {
                warn!(secret = %format!("{}/{}", secret.namespace().unwrap_or_default(), secret.name_any()), "invalid notifier: {problem}");
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "InvalidNotifier".into(),
                    note: Some(crate::events::note(&problem)),
                    action: "ReadNotifier".into(),
                    secondary: None,
                };
                if let Err(e) = events.publish(&ev, &secret.object_ref(&())).await {
                    debug!("event InvalidNotifier not recorded: {e}");
                }
            }
        }
    };
    Some((reader, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of the world around [`Taken`]: a scan finishes a run,
    /// a reconcile sees the scan (perhaps from a stale cache), a sent run
    /// is recorded in the status, a read fails and the run is given back,
    /// or the operator restarts.
    #[derive(Clone, Debug)]
    enum Step {
        Finish(usize),
        Reconcile { scan: usize, stale: bool },
        Record(usize),
        ReadFails(usize),
        Restart,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3usize).prop_map(Step::Finish),
            (0..3usize, any::<bool>()).prop_map(|(scan, stale)| Step::Reconcile { scan, stale }),
            (0..3usize).prop_map(Step::Record),
            (0..3usize).prop_map(Step::ReadFails),
            Just(Step::Restart),
        ]
    }

    proptest::proptest! {
        /// Invariants: a process takes up each run at most once; a run
        /// recorded as announced is never taken up again, by any process;
        /// the latest run, once a reconcile sees it, is taken up unless it
        /// was taken up or recorded before (nothing is lost). A reconcile
        /// may see an older version of the scan than the latest, but never
        /// one older than its process saw before (a watch cache does not go
        /// back; a new process starts from a fresh list).
        #[test]
        fn every_run_is_taken_up_once_per_process_and_never_after_its_record(
            steps in proptest::collection::vec(step(), 1..80)
        ) {
            let uid = |i: usize| format!("scan-{i}");
            // Per scan: its versions, (lastSuccess run, announcedRun), and
            // the one this process saw last.
            let mut versions: [Vec<(i64, i64)>; 3] = std::array::from_fn(|_| vec![(0, i64::MIN)]);
            let mut seen = [0usize; 3];
            let mut taken = Taken::default();
            let mut mine: Vec<(usize, i64)> = Vec::new();
            for s in steps {
                match s {
                    Step::Finish(i) => {
                        let (run, rec) = *versions[i].last().unwrap();
                        versions[i].push((run + 1, rec));
                    }
                    Step::Reconcile { scan: i, stale } => {
                        let at = if stale { seen[i] } else { versions[i].len() - 1 };
                        seen[i] = at;
                        let (run, rec) = versions[i][at];
                        if run < 1 {
                            continue;
                        }
                        let recorded = versions[i].last().unwrap().1;
                        if taken.take(&uid(i), run, rec) {
                            proptest::prop_assert!(!mine.contains(&(i, run)), "{i} run {run} taken twice");
                            proptest::prop_assert!(run > recorded, "{i} run {run} taken after its record");
                            mine.push((i, run));
                        } else if !stale {
                            let newer_taken = mine.iter().any(|(j, r)| *j == i && *r >= run);
                            proptest::prop_assert!(newer_taken || run <= recorded, "{i} run {run} lost");
                        }
                    }
                    Step::Record(i) => {
                        // The announcer records the latest run it took up.
                        let (run, rec) = *versions[i].last().unwrap();
                        if let Some(r) = mine.iter().filter(|(j, _)| *j == i).map(|(_, r)| *r).max().filter(|r| *r > rec) {
                            versions[i].push((run, r));
                        }
                    }
                    Step::ReadFails(i) => {
                        let rec = versions[i].last().unwrap().1;
                        if let Some(pos) = mine.iter().rposition(|(j, r)| *j == i && *r > rec) {
                            let (_, r) = mine.remove(pos);
                            taken.forget(&uid(i), r);
                        }
                    }
                    Step::Restart => {
                        taken = Taken::default();
                        mine.clear();
                        for i in 0..3 {
                            seen[i] = versions[i].len() - 1;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_run_is_taken_up_once_and_never_when_recorded_or_older() {
        let mut t = Taken::default();
        assert!(t.take("a", 10, i64::MIN));
        // Reconciles repeat, and a stale cache shows the run again.
        assert!(!t.take("a", 10, i64::MIN));
        assert!(!t.take("a", 9, i64::MIN));
        // Another scan; a recorded run (after a restart).
        assert!(t.take("b", 10, i64::MIN));
        let mut restarted = Taken::default();
        assert!(!restarted.take("a", 10, 10));
        assert!(restarted.take("a", 11, 10));
        // Given back when it could not be read: taken again later.
        t.forget("a", 10);
        assert!(t.take("a", 10, i64::MIN));
        // A later run replaced it: forgetting the old one keeps it.
        assert!(t.take("a", 20, i64::MIN));
        t.forget("a", 10);
        assert!(!t.take("a", 20, i64::MIN));
    }
}
