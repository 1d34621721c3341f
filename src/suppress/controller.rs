//! Keeps the suppression marks of scans and the status of exceptions true.
//!
//! One worker, fed by the exception watch (an exception created, changed in
//! its spec or deleted: every scan of its namespace again), by the scan
//! reconciler (a scan whose last run was not checked against its
//! namespace's exceptions: that scan) and by its own clock (an exception
//! expiring: its namespace again). It reads each scan whole (the cache
//! holds scans without their findings), marks the findings
//! ([`super::mark`]) and writes the status only when a mark or count
//! changed, against the version it read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Rules, State, mark};
use crate::api::conditions::{EXCEPTION_ACTIVE, EXCEPTION_EXPIRED, EXCEPTION_INVALID};
use crate::api::labels::FIELD_MANAGER;
use crate::api::{NucleiFindingException, NucleiFindingExceptionSpec, NucleiScan, ScanKey};
use crate::scan::status::{patch_status, set_condition};

/// How long a namespace that failed in part waits before it is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// Work for the worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    /// Every scan of a namespace, and its exceptions' status.
    Namespace(String),
    /// One scan (namespace, name).
    Scan(String, String),
}

/// The exceptions as the rest of the operator sees them.
pub struct Exceptions {
    store: Store<NucleiFindingException>,
    wake: mpsc::UnboundedSender<Work>,
    /// True once the exceptions were listed (or cannot be: the CRD is
    /// missing or not readable).
    known: watch::Receiver<bool>,
}

impl Exceptions {
    /// The active rules of namespace `ns` at `now`.
    pub fn rules(&self, ns: &str, now: DateTime<Utc>) -> Rules {
        Rules::of(of(&self.store, ns).iter().map(|e| e.as_ref()), now)
    }

    /// Whether namespace `ns` has exceptions (in any state).
    pub fn any_in(&self, ns: &str) -> bool {
        self.store
            .find(|e| e.namespace().as_deref() == Some(ns))
            .is_some()
    }

    /// Waits up to `max` until the exceptions are known; false if they are
    /// not by then.
    pub async fn known(&self, max: Duration) -> bool {
        let mut known = self.known.clone();
        tokio::time::timeout(max, known.wait_for(|k| *k))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Told of each scan the scan reconciler sees: one whose last run was
    /// not checked against its namespace's exceptions (or was, for
    /// exceptions since gone) is marked.
    pub fn seen(&self, scan: &NucleiScan) {
        let Some(status) = scan.status.as_ref() else {
            return;
        };
        let Some(summary) = status.summary.as_ref() else {
            return;
        };
        let ns = scan.namespace().unwrap_or_default();
        let stale = if self.any_in(&ns) {
            !status.suppression_current()
        } else {
            summary.suppressed_findings.is_some()
        };
        if stale {
            let _ = self.wake.send(Work::Scan(ns, scan.name_any()));
        }
    }
}

fn of(store: &Store<NucleiFindingException>, ns: &str) -> Vec<Arc<NucleiFindingException>> {
    store
        .state()
        .into_iter()
        .filter(|e| e.namespace().as_deref() == Some(ns))
        .collect()
}

/// The handle the scan reconciler and the announcer use, and the task that
/// watches the exceptions and marks the scans (run it until `shutdown`).
pub fn start(
    client: &kube::Client,
    scans: Store<NucleiScan>,
    reporter: &Reporter,
    shutdown: CancellationToken,
) -> (Arc<Exceptions>, impl Future<Output = ()> + Send + 'static) {
    let (store, events) = crate::cache::reflect_each(
        client.clone(),
        watcher::Config::default().any_semantic(),
        |_| {},
        |metadata| NucleiFindingException {
            metadata,
            spec: NucleiFindingExceptionSpec::default(),
            status: None,
        },
    );
    let (wake, mut rx) = mpsc::unbounded_channel();
    let (tell_known, known) = watch::channel(false);
    let exceptions = Arc::new(Exceptions {
        store: store.clone(),
        wake: wake.clone(),
        known,
    });
    let worker = Worker {
        client: client.clone(),
        exceptions: store,
        scans,
        recorder: Recorder::new(client.clone(), reporter.clone()),
        counts: Mutex::default(),
        written: Mutex::default(),
    };
    let task = async move {
        let watch = {
            let mut warned = false;
            // Exception uid → generation: the worker's own status writes
            // (same generation) are not work.
            let mut generations: HashMap<String, Option<i64>> = HashMap::new();
            events.for_each(move |event| {
                match event {
                    Ok(event) => {
                        warned = false;
                        if matches!(event, watcher::Event::InitDone) {
                            tell_known.send_replace(true);
                        }
                        for ns in changed(&event, &mut generations) {
                            let _ = wake.send(Work::Namespace(ns));
                        }
                    }
                    Err(e) => {
                        if unreadable(&e) {
                            // Nothing can be accepted; announcing goes on.
                            tell_known.send_replace(true);
                        }
                        if !warned {
                            warned = true;
                            warn!("watching NucleiFindingExceptions: {e}");
                        } else {
                            debug!("watching NucleiFindingExceptions: {e}");
                        }
                    }
                }
                futures::future::ready(())
            })
        };
        tokio::select! {
            _ = watch => {},
            _ = worker.run(&mut rx) => {},
            _ = shutdown.cancelled() => {},
        }
    };
    (exceptions, task)
}

/// Whether the watch failed because the exceptions cannot be listed at all
/// (the CRD is not installed, or the operator may not read it).
fn unreadable(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(a)) if a.code == 404 || a.code == 403)
}

/// The namespaces whose exceptions a watch event changed (created, deleted,
/// or a new generation of the spec).
fn changed(
    event: &watcher::Event<NucleiFindingException>,
    generations: &mut HashMap<String, Option<i64>>,
) -> Vec<String> {
    match event {
        watcher::Event::Apply(e) | watcher::Event::InitApply(e) => {
            let uid = e.uid().unwrap_or_default();
            let generation = e.metadata.generation;
            if generations.insert(uid, generation) == Some(generation) {
                return Vec::new();
            }
            e.namespace().into_iter().collect()
        }
        watcher::Event::Delete(e) => {
            generations.remove(&e.uid().unwrap_or_default());
            e.namespace().into_iter().collect()
        }
        watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
    }
}

struct Worker {
    client: kube::Client,
    exceptions: Store<NucleiFindingException>,
    scans: Store<NucleiScan>,
    recorder: Recorder,
    /// Suppressed findings per scan (namespace, name) and exception name,
    /// as last marked: what the exceptions' `suppressedFindings` sum.
    counts: Mutex<HashMap<(String, String), BTreeMap<String, i64>>>,
    /// Exception uid → the status last written (generation, reason,
    /// message, count), so that one whose status cannot be read back is
    /// not written (nor told in an Event) again and again.
    written: Mutex<HashMap<String, Written>>,
}

type Written = (Option<i64>, String, String, Option<i64>);

impl Worker {
    async fn run(&self, rx: &mut mpsc::UnboundedReceiver<Work>) {
        // Nothing is marked before both caches are whole (a namespace's
        // exceptions half-listed would unmark findings); work waits,
        // deduplicated, meanwhile (also for good while the CRD is missing).
        let ready = async {
            crate::cache::ready(&self.scans).await;
            crate::cache::ready(&self.exceptions).await;
        };
        let mut ready = std::pin::pin!(ready);
        let mut is_ready = false;
        let mut pending: BTreeSet<Work> = BTreeSet::new();
        // Namespace → when its next exception expires (or it is retried).
        let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                _ = &mut ready, if !is_ready => is_ready = true,
                work = rx.recv() => match work {
                    Some(w) => { pending.insert(w); }
                    None => return,
                },
                _ = sleep_until(next) => {
                    let now = tokio::time::Instant::now();
                    due.retain(|ns, at| {
                        let keep = *at > now;
                        if !keep {
                            pending.insert(Work::Namespace(ns.clone()));
                        }
                        keep
                    });
                }
            }
            if !is_ready {
                continue;
            }
            // A burst of events (a restart lists every exception) makes one
            // pass per namespace.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(w) = rx.try_recv() {
                pending.insert(w);
            }
            let whole: BTreeSet<String> = pending
                .iter()
                .filter_map(|w| match w {
                    Work::Namespace(ns) => Some(ns.clone()),
                    Work::Scan(..) => None,
                })
                .collect();
            for work in std::mem::take(&mut pending) {
                let (ns, next) = match work {
                    Work::Namespace(ns) => {
                        let next = self.namespace(&ns).await;
                        (ns, next)
                    }
                    Work::Scan(ns, _) if whole.contains(&ns) => continue,
                    Work::Scan(ns, name) => {
                        let next = self.scan(&ns, &name).await;
                        (ns, next)
                    }
                };
                match next {
                    Some(at) => {
                        let wait = (at - Utc::now()).to_std().unwrap_or_default();
                        due.insert(ns, tokio::time::Instant::now() + wait);
                    }
                    None => {
                        due.remove(&ns);
                    }
                }
            }
        }
    }

    /// Marks every scan of `ns` and reports its exceptions; returns when to
    /// look again (the next expiry, or a retry when a scan failed).
    async fn namespace(&self, ns: &str) -> Option<DateTime<Utc>> {
        let none = of(&self.exceptions, ns).is_empty();
        let names: HashSet<String> = self
            .scans
            .state()
            .into_iter()
            .filter(|s| s.namespace().as_deref() == Some(ns))
            .filter(|s| {
                let summary = s.status.as_ref().and_then(|st| st.summary.as_ref());
                // Without exceptions only scans marked before are read.
                summary.is_some_and(|sum| !none || sum.suppressed_findings.is_some())
            })
            .map(|s| s.name_any())
            .collect();
        self.counts
            .lock()
            .expect("counts lock")
            .retain(|(n, name), _| n != ns || names.contains(name));
        let mut failed = false;
        for name in &names {
            // One scan that cannot be marked holds up none of the others.
            if let Err(e) = self.mark(ns, name).await {
                warn!(scan = %ScanKey::new(ns, name), "marking suppressed findings: {e:#}");
                failed = true;
            }
        }
        self.report_and_retry(ns, failed).await
    }

    /// Marks one scan of `ns` and reports the namespace's exceptions.
    async fn scan(&self, ns: &str, name: &str) -> Option<DateTime<Utc>> {
        let failed = match self.mark(ns, name).await {
            Ok(()) => false,
            Err(e) => {
                warn!(scan = %ScanKey::new(ns, name), "marking suppressed findings: {e:#}");
                true
            }
        };
        self.report_and_retry(ns, failed).await
    }

    async fn report_and_retry(&self, ns: &str, failed: bool) -> Option<DateTime<Utc>> {
        let next = match self.report(ns).await {
            Ok(next) => next,
            Err(e) => {
                warn!(
                    namespace = ns,
                    "writing NucleiFindingException status: {e:#}"
                );
                return Some(Utc::now() + RETRY);
            }
        };
        if failed {
            let retry = Utc::now() + RETRY;
            return Some(next.map_or(retry, |n| n.min(retry)));
        }
        next
    }

    /// Marks the findings of scan `ns/name` with the namespace's active
    /// exceptions now, writing only what changed.
    async fn mark(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let api: Api<NucleiScan> = Api::namespaced(self.client.clone(), ns);
        let key = (ns.to_owned(), name.to_owned());
        for _ in 0..5 {
            let exceptions = of(&self.exceptions, ns);
            let rules = Rules::of(exceptions.iter().map(|e| e.as_ref()), Utc::now());
            let Some(mut scan) = api.get_opt(name).await? else {
                self.counts.lock().expect("counts lock").remove(&key);
                return Ok(());
            };
            let rv = scan.resource_version();
            let Some(status) = scan.status.as_mut() else {
                return Ok(());
            };
            let run = status.last_success().cloned();
            let Some(summary) = status.summary.as_ref() else {
                return Ok(());
            };
            let marks = mark(&mut status.findings, &rules);
            // Counted whenever the namespace has exceptions (so that a scan
            // shows which run was checked), absent when it has none.
            let (count, by_severity, run) = if exceptions.is_empty() {
                (None, BTreeMap::new(), None)
            } else {
                (Some(marks.total()), marks.by_severity.clone(), run)
            };
            if marks.changed
                || summary.suppressed_findings != count
                || summary.suppressed_by_severity != by_severity
                || summary.suppressed_run != run
            {
                let by_severity = if by_severity.is_empty() {
                    Value::Null
                } else {
                    json!(by_severity)
                };
                let mut patch = json!({"summary": {
                    "suppressedFindings": count,
                    "suppressedBySeverity": by_severity,
                    "suppressedRun": run,
                }});
                if marks.changed {
                    patch["findings"] = json!(status.findings);
                }
                match patch_status(&api, name, rv.as_deref(), patch).await {
                    Ok(_) => {
                        info!(scan = %ScanKey::new(ns, name), suppressed = marks.total(), "suppressed findings marked");
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            self.counts
                .lock()
                .expect("counts lock")
                .insert(key, marks.by_exception);
            return Ok(());
        }
        anyhow::bail!("scan {ns}/{name} changed under every attempt to mark it")
    }

    /// Writes each exception's `Active` condition and count where they
    /// changed, with an Event when one expires or turns invalid; returns
    /// when the next active one expires.
    async fn report(&self, ns: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let now = Utc::now();
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        {
            let mut counts = self.counts.lock().expect("counts lock");
            // Scans deleted since they were marked count no more.
            counts.retain(|(n, name), _| {
                n != ns || self.scans.get(&ObjectRef::new(name).within(ns)).is_some()
            });
            for ((n, _), by) in counts.iter() {
                if n == ns {
                    for (ex, c) in by {
                        *totals.entry(ex.clone()).or_default() += c;
                    }
                }
            }
        }
        // Through untyped objects: the reply of an exception that does not
        // decode must not fail the write.
        let ar = ApiResource::erase::<NucleiFindingException>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        let mut next: Option<DateTime<Utc>> = None;
        let exceptions = of(&self.exceptions, ns);
        self.written.lock().expect("written lock").retain(|uid, _| {
            // Forget the exceptions of this namespace that are gone.
            self.exceptions
                .find(|e| e.uid().as_deref() == Some(uid.as_str()))
                .is_some()
        });
        for ex in exceptions {
            let state = State::of(&ex, now);
            let (active, reason, message) = match &state {
                State::Active(_, until) => {
                    if let Some(until) = until {
                        next = Some(next.map_or(*until, |n| n.min(*until)));
                    }
                    let until = until.map_or("until it is deleted".to_owned(), |t| {
                        format!("until {}", t.to_rfc3339())
                    });
                    (
                        true,
                        EXCEPTION_ACTIVE,
                        format!("accepts the findings it matches {until}"),
                    )
                }
                State::Expired(at) => (
                    false,
                    EXCEPTION_EXPIRED,
                    format!(
                        "expired at {}: the findings it accepted count again",
                        at.to_rfc3339()
                    ),
                ),
                State::Invalid(why) => (false, EXCEPTION_INVALID, why.clone()),
            };
            let uid = ex.uid().unwrap_or_default();
            let generation = ex.metadata.generation;
            let count = Some(if active {
                totals.get(&ex.name_any()).copied().unwrap_or(0)
            } else {
                0
            });
            let now_written: Written = (generation, reason.to_owned(), message.clone(), count);
            let last = self
                .written
                .lock()
                .expect("written lock")
                .get(&uid)
                .cloned();
            if last.as_ref() == Some(&now_written) {
                continue;
            }
            let status = ex.status.clone().unwrap_or_default();
            let before = status
                .conditions
                .iter()
                .find(|c| c.type_ == EXCEPTION_ACTIVE)
                .map(|c| c.reason.clone())
                .or_else(|| last.as_ref().map(|l| l.1.clone()));
            let mut conditions = status.conditions.clone();
            let changed = set_condition(
                &mut conditions,
                EXCEPTION_ACTIVE,
                active,
                reason,
                &message,
                generation,
                now,
            );
            if changed
                || status.suppressed_findings != count
                || status.observed_generation != generation
            {
                let patch = json!({"status": {
                    "conditions": conditions,
                    "suppressedFindings": count,
                    "observedGeneration": generation,
                }});
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api
                    .patch_status(&ex.name_any(), &params, &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(a)) if a.code == 404 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            self.written
                .lock()
                .expect("written lock")
                .insert(uid, now_written);
            if !active && before.as_deref() != Some(reason) {
                let ev = Event {
                    type_: if reason == EXCEPTION_INVALID {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.into(),
                    note: Some(crate::events::note(&message)),
                    action: "Suppress".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &ex.object_ref(&())).await {
                    debug!("event {reason} not recorded: {e}");
                }
            }
        }
        Ok(next)
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ns: &str, uid: &str, generation: i64) -> NucleiFindingException {
        let mut e = NucleiFindingException::new("x", NucleiFindingExceptionSpec::default());
        e.metadata.namespace = Some(ns.into());
        e.metadata.uid = Some(uid.into());
        e.metadata.generation = Some(generation);
        e
    }

    #[test]
    fn only_new_exceptions_spec_changes_and_deletions_are_work() {
        let mut seen = HashMap::new();
        let mut work = |e: watcher::Event<NucleiFindingException>| changed(&e, &mut seen);
        assert_eq!(work(watcher::Event::Init), Vec::<String>::new());
        assert_eq!(work(watcher::Event::InitApply(ex("web", "a", 1))), ["web"]);
        assert_eq!(work(watcher::Event::InitDone), Vec::<String>::new());
        // The worker's own status write: same generation.
        assert_eq!(
            work(watcher::Event::Apply(ex("web", "a", 1))),
            Vec::<String>::new()
        );
        assert_eq!(work(watcher::Event::Apply(ex("web", "a", 2))), ["web"]);
        assert_eq!(work(watcher::Event::Apply(ex("shop", "b", 1))), ["shop"]);
        // A relist after a watch restart changes nothing known.
        assert_eq!(
            work(watcher::Event::InitApply(ex("web", "a", 2))),
            Vec::<String>::new()
        );
        assert_eq!(work(watcher::Event::Delete(ex("web", "a", 2))), ["web"]);
        // Created again under the same uid (never in practice) is new.
        assert_eq!(work(watcher::Event::Apply(ex("web", "a", 2))), ["web"]);
    }

    #[test]
    fn only_a_missing_or_forbidden_kind_is_taken_as_no_exceptions() {
        let api = |code: u16| {
            watcher::Error::InitialListFailed(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        assert!(unreadable(&api(404)));
        assert!(unreadable(&api(403)));
        assert!(!unreadable(&api(500)));
        assert!(!unreadable(&watcher::Error::NoResourceVersion));
    }
}
