//! Keeps the suppression marks of scans and the status of exceptions true.
//!
//! One worker, fed by the exception watch (a changed exception: every scan
//! of its namespace again), by the scan reconciler (a scan whose last run
//! was not checked against its namespace's exceptions: that scan) and by
//! its own clock (an exception expiring: its namespace again). It reads
//! each scan whole (the cache holds scans without their findings), marks
//! the findings ([`super::mark`]) and writes the status only when a mark or
//! count changed, against the version it read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Rules, State, mark};
use crate::api::{NucleiFindingException, NucleiFindingExceptionSpec, NucleiScan};
use crate::scan::status::{patch_status, set_condition};

/// Field manager of the exceptions' status.
const FIELD_MANAGER: &str = "nuclei-operator";
/// How long a failed namespace waits before it is tried again.
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
}

impl Exceptions {
    /// The active rules of namespace `ns` at `now`.
    pub fn rules(&self, ns: &str, now: DateTime<Utc>) -> Rules {
        Rules::of(self.of(ns).iter().map(|e| e.as_ref()), now)
    }

    fn of(&self, ns: &str) -> Vec<Arc<NucleiFindingException>> {
        self.store
            .state()
            .into_iter()
            .filter(|e| e.namespace().as_deref() == Some(ns))
            .collect()
    }

    /// Told of each scan the scan reconciler sees: one whose last run was
    /// not checked against its namespace's exceptions (or was, for
    /// exceptions since gone) is marked.
    pub fn seen(&self, scan: &NucleiScan) {
        let Some(summary) = scan.status.as_ref().and_then(|s| s.summary.as_ref()) else {
            return;
        };
        let ns = scan.namespace().unwrap_or_default();
        let any = self
            .store
            .find(|e| e.namespace().as_deref() == Some(ns.as_str()))
            .is_some();
        if any != summary.suppressed_findings.is_some() {
            let _ = self.wake.send(Work::Scan(ns, scan.name_any()));
        }
    }
}

/// The handle the scan reconciler uses, and the task that watches the
/// exceptions and marks the scans (run it until `shutdown`).
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
    let exceptions = Arc::new(Exceptions {
        store: store.clone(),
        wake: wake.clone(),
    });
    let worker = Worker {
        client: client.clone(),
        exceptions: store,
        scans,
        recorder: Recorder::new(client.clone(), reporter.clone()),
        counts: Mutex::default(),
    };
    let task = async move {
        let watch = {
            let wake = wake.clone();
            let mut warned = false;
            events.default_backoff().for_each(move |event| {
                match event {
                    Ok(event) => {
                        warned = false;
                        for ns in namespaces(&event) {
                            let _ = wake.send(Work::Namespace(ns));
                        }
                    }
                    // Also when the CRD is not installed: scanning goes on
                    // without exceptions, and they apply once it is.
                    Err(e) if !warned => {
                        warned = true;
                        warn!("watching NucleiFindingExceptions: {e}");
                    }
                    Err(e) => debug!("watching NucleiFindingExceptions: {e}"),
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

/// The namespaces a watch event touches.
fn namespaces(event: &watcher::Event<NucleiFindingException>) -> Vec<String> {
    match event {
        watcher::Event::Apply(e) | watcher::Event::Delete(e) | watcher::Event::InitApply(e) => {
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
}

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
                let ns = match &work {
                    Work::Namespace(ns) => ns.clone(),
                    Work::Scan(ns, _) if whole.contains(ns) => continue,
                    Work::Scan(ns, _) => ns.clone(),
                };
                let result = match &work {
                    Work::Namespace(ns) => self.namespace(ns).await,
                    Work::Scan(ns, name) => self.scan(ns, name).await,
                };
                match result {
                    Ok(Some(expires)) => {
                        let wait = (expires - Utc::now()).to_std().unwrap_or_default();
                        due.insert(ns, tokio::time::Instant::now() + wait);
                    }
                    Ok(None) => {
                        due.remove(&ns);
                    }
                    Err(e) => {
                        warn!(namespace = ns, "marking suppressed findings: {e:#}");
                        due.insert(ns, tokio::time::Instant::now() + RETRY);
                    }
                }
            }
        }
    }

    /// Marks every scan of `ns` and reports its exceptions; returns when
    /// the next of them expires.
    async fn namespace(&self, ns: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let none = self.of(ns).is_empty();
        let names: Vec<String> = self
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
        for name in &names {
            self.mark(ns, name).await?;
        }
        self.report(ns).await
    }

    /// Marks one scan of `ns` and reports the namespace's exceptions.
    async fn scan(&self, ns: &str, name: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        self.mark(ns, name).await?;
        self.report(ns).await
    }

    /// Marks the findings of scan `ns/name` with the namespace's active
    /// exceptions now, writing only what changed.
    async fn mark(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let api: Api<NucleiScan> = Api::namespaced(self.client.clone(), ns);
        let key = (ns.to_owned(), name.to_owned());
        for _ in 0..5 {
            let exceptions = self.of(ns);
            let rules = Rules::of(exceptions.iter().map(|e| e.as_ref()), Utc::now());
            let Some(mut scan) = api.get_opt(name).await? else {
                self.counts.lock().expect("counts lock").remove(&key);
                return Ok(());
            };
            let rv = scan.resource_version();
            let Some(status) = scan.status.as_mut() else {
                return Ok(());
            };
            let Some(summary) = status.summary.as_ref() else {
                return Ok(());
            };
            let marks = mark(&mut status.findings, &rules);
            // Counted whenever the namespace has exceptions (so that a scan
            // shows it was checked), absent when it has none.
            let (count, by_severity) = if exceptions.is_empty() {
                (None, BTreeMap::new())
            } else {
                (Some(marks.total()), marks.by_severity.clone())
            };
            if marks.changed
                || summary.suppressed_findings != count
                || summary.suppressed_by_severity != by_severity
            {
                let by_severity = if by_severity.is_empty() {
                    Value::Null
                } else {
                    json!(by_severity)
                };
                let mut patch = json!({
                    "summary": {"suppressedFindings": count, "suppressedBySeverity": by_severity}
                });
                if marks.changed {
                    patch["findings"] = json!(status.findings);
                }
                match patch_status(&api, name, rv.as_deref(), patch).await {
                    Ok(_) => {
                        info!(scan = %format!("{ns}/{name}"), suppressed = marks.total(), "suppressed findings marked");
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

    fn of(&self, ns: &str) -> Vec<Arc<NucleiFindingException>> {
        self.exceptions
            .state()
            .into_iter()
            .filter(|e| e.namespace().as_deref() == Some(ns))
            .collect()
    }

    /// Writes each exception's `Active` condition and count where they
    /// changed, with an Event when one expires or turns invalid; returns
    /// when the next active one expires.
    async fn report(&self, ns: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let now = Utc::now();
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for ((n, _), by) in self.counts.lock().expect("counts lock").iter() {
            if n == ns {
                for (ex, c) in by {
                    *totals.entry(ex.clone()).or_default() += c;
                }
            }
        }
        let api: Api<NucleiFindingException> = Api::namespaced(self.client.clone(), ns);
        let mut next: Option<DateTime<Utc>> = None;
        for ex in self.of(ns) {
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
                        "Active",
                        format!("accepts the findings it matches {until}"),
                    )
                }
                State::Expired(at) => (
                    false,
                    "Expired",
                    format!(
                        "expired at {}: the findings it accepted count again",
                        at.to_rfc3339()
                    ),
                ),
                State::Invalid(why) => (false, "Invalid", why.clone()),
            };
            let status = ex.status.clone().unwrap_or_default();
            let before: Option<Condition> = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Active")
                .cloned();
            let mut conditions = status.conditions.clone();
            let generation = ex.metadata.generation;
            let changed = set_condition(
                &mut conditions,
                "Active",
                active,
                reason,
                &message,
                generation,
                now,
            );
            let count = Some(if active {
                totals.get(&ex.name_any()).copied().unwrap_or(0)
            } else {
                0
            });
            if !changed
                && status.suppressed_findings == count
                && status.observed_generation == generation
            {
                continue;
            }
            let patch = json!({"status": {
                "conditions": conditions,
                "suppressedFindings": count,
                "observedGeneration": generation,
            }});
            api.patch_status(
                &ex.name_any(),
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .or_else(|e| match e {
                kube::Error::Api(ref a) if a.code == 404 => Ok(ex.as_ref().clone()),
                e => Err(e),
            })?;
            let turned = before.is_none_or(|c| c.reason != reason);
            if turned && !active {
                let ev = Event {
                    type_: if reason == "Invalid" {
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
