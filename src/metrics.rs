//! Prometheus metrics (the README lists them): counters and histograms the
//! controllers update as things happen, and the per-scan series ([`ScanSeries`]), which
//! are read from the scan cache at each scrape, so they are never stale and
//! cost nothing between scrapes. No series has a per-finding label: the
//! per-scan ones are bounded by the number of scans times six severities.

use std::sync::{Arc, OnceLock};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{NucleiScan, NucleiScanStatus, ScanPhase, Severity};
use crate::scan::status::chrono;

/// Label of a per-reason queue gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Label of the scan-outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Label of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

/// The `controller` label values: the scan controller's and each source
/// controller's (its kind in lower case).
pub const CONTROLLERS: [&str; 4] = ["nucleiscan", "ingress", "virtualservice", "httproute"];

/// Label of the reconcile-error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    pub error: String,
}

/// Labels of the notification counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabel {
    /// The notifier type: slack, teams, webhook.
    pub r#type: String,
    pub result: String,
}

/// Labels of the template cache's fetch counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabel {
    /// `published` (a manifest, which may still say a repository failed)
    /// or `failed` (nothing published: the last manifest stays in use).
    pub result: String,
}

/// The `result` label values of the notification counter.
pub const NOTIFY_RESULTS: [&str; 4] = ["delivered", "failed", "retried", "dropped"];

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub jobs_created: Counter,
    pub job_duration: Histogram,
    pub active_jobs: Gauge,
    pub queue_depth: Family<ReasonLabel, Gauge>,
    pub queue_scheduled: Gauge,
    pub queue_wait: Histogram,
    pub outcomes: Family<OutcomeLabel, Counter>,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub notifications: Family<NotifyLabel, Counter>,
    pub template_fetches: Family<FetchLabel, Counter>,
    pub templates_published: Gauge,
    pub templates_unavailable: Gauge,
    scans: ScanCache,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs_created = Counter::default();
        let job_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let active_jobs = Gauge::default();
        let queue_depth = Family::<ReasonLabel, Gauge>::default();
        let queue_scheduled = Gauge::default();
        let queue_wait = Histogram::new(exponential_buckets(0.01, 4.0, 12));
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let reconcile_errors = Family::<ErrorLabel, Counter>::default();
        let notifications = Family::<NotifyLabel, Counter>::default();
        let template_fetches = Family::<FetchLabel, Counter>::default();
        let templates_published = Gauge::default();
        let templates_unavailable = Gauge::default();
        let scans = ScanCache::default();
        registry.register(
            "nuclei_scan_jobs_created",
            "Scanner Jobs (or in-process scans) started",
            jobs_created.clone(),
        );
        registry.register(
            "nuclei_scan_job_duration_seconds",
            "Duration of finished scans",
            job_duration.clone(),
        );
        registry.register(
            "nuclei_active_scan_jobs",
            "Scans holding a dispatcher slot (running or being created)",
            active_jobs.clone(),
        );
        registry.register(
            "nuclei_queue_depth",
            "Scan intents ready to run, by reason",
            queue_depth.clone(),
        );
        registry.register(
            "nuclei_queue_scheduled",
            "Scan intents waiting for their due time (scheduled rescans, retries)",
            queue_scheduled.clone(),
        );
        registry.register(
            "nuclei_queue_wait_seconds",
            "Time from ready to admitted",
            queue_wait.clone(),
        );
        registry.register(
            "nuclei_scan_outcomes",
            "Finished scans by outcome",
            outcomes.clone(),
        );
        registry.register(
            "nuclei_reconciles",
            "Reconciles run, by controller (nucleiscan, or the source kind in lower case)",
            reconciles.clone(),
        );
        registry.register(
            "nuclei_reconcile_errors",
            "Failed reconciles by controller and error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "nuclei_notifications",
            "Notification messages by notifier type and result (delivered, failed after its retries, retried, dropped)",
            notifications.clone(),
        );
        registry.register(
            "nuclei_template_fetches",
            "Fetches of TEMPLATE_REPOSITORIES into the template cache, by result (published, failed)",
            template_fetches.clone(),
        );
        registry.register(
            "nuclei_template_cache_published_timestamp_seconds",
            "When the template cache in use was fetched (Unix time; 0 before the first)",
            templates_published.clone(),
        );
        registry.register(
            "nuclei_template_repositories_unavailable",
            "TEMPLATE_REPOSITORIES the template cache in use could not fetch",
            templates_unavailable.clone(),
        );
        for result in ["published", "failed"] {
            template_fetches
                .get_or_create(&FetchLabel {
                    result: result.into(),
                })
                .inc_by(0);
        }
        // Every known label value at 0 from the start, so `rate()`, sums
        // and the dashboard see them before the first event.
        for reason in dispatcher::Reason::ALL {
            queue_depth
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str().into(),
                })
                .set(0);
        }
        for outcome in ["completed", "failed"] {
            outcomes
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.into(),
                })
                .inc_by(0);
        }
        for controller in CONTROLLERS {
            reconciles
                .get_or_create(&ControllerLabel {
                    controller: controller.into(),
                })
                .inc_by(0);
        }
        use crate::error::Error;
        let steps = Error::SCAN_STEPS
            .map(|s| ("nucleiscan", s))
            .into_iter()
            .chain(
                CONTROLLERS[1..]
                    .iter()
                    .flat_map(|c| Error::SOURCE_STEPS.map(|s| (*c, s))),
            );
        for (controller, step) in steps {
            reconcile_errors
                .get_or_create(&ErrorLabel {
                    controller: controller.into(),
                    error: step.into(),
                })
                .inc_by(0);
        }
        for kind in crate::notify::notifier::Kind::ALL {
            for result in NOTIFY_RESULTS {
                notifications
                    .get_or_create(&NotifyLabel {
                        r#type: kind.as_str().into(),
                        result: result.into(),
                    })
                    .inc_by(0);
            }
        }
        registry.register_collector(Box::new(scans.clone()));
        Metrics {
            registry,
            jobs_created,
            job_duration,
            active_jobs,
            queue_depth,
            queue_scheduled,
            queue_wait,
            outcomes,
            reconciles,
            reconcile_errors,
            notifications,
            template_fetches,
            templates_published,
            templates_unavailable,
            scans,
        }
    }
}

impl Metrics {
    /// Counts one notification message of notifier type `kind` with
    /// `result` (one of [`NOTIFY_RESULTS`]).
    pub fn notified(&self, kind: &str, result: &str) {
        self.notifications
            .get_or_create(&NotifyLabel {
                r#type: kind.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a failed reconcile of `controller` by the step that failed.
    pub fn reconcile_failed(&self, controller: &str, err: &crate::error::Error) {
        self.reconcile_errors
            .get_or_create(&ErrorLabel {
                controller: controller.into(),
                error: err.step().into(),
            })
            .inc();
    }

    /// Counts one reconcile of `controller` (one of [`CONTROLLERS`]).
    pub fn reconciled(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabel {
                controller: controller.into(),
            })
            .inc();
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// From now on, every scrape reads the per-scan series from `scans`
    /// (the scan controller's cache, filled once this replica leads). A
    /// second call is ignored.
    pub fn read_scans_from(&self, scans: Store<NucleiScan>) {
        let _ = self.scans.0.set(scans);
    }
}

/// The scan cache the per-scan series are read from; empty on a follower.
#[derive(Clone, Debug, Default)]
struct ScanCache(Arc<OnceLock<Store<NucleiScan>>>);

impl Collector for ScanCache {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let info = ConstGauge::new(1i64);
        info.encode(
            encoder
                .encode_descriptor(
                    "nuclei_build_info",
                    "The operator's version; always 1",
                    None,
                    info.metric_type(),
                )?
                .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?,
        )?;
        // A follower has no cache; a new leader's is empty until its first
        // list: zeros then would read as every scan gone.
        let Some(store) = self.0.get() else {
            return Ok(());
        };
        if futures::FutureExt::now_or_never(store.wait_until_ready()).is_none() {
            return Ok(());
        }
        let scans = store.state();
        ScanSeries::of(scans.iter().map(|s| s.as_ref())).encode(&mut encoder)
    }
}

/// The six `severity` label values, in [`Severity::ALL`] order.
const SEVERITIES: usize = Severity::ALL.len();

/// Phases of `nuclei_scans`: `New` for a scan with no phase yet.
const PHASES: [&str; 5] = ["New", "Pending", "Running", "Completed", "Failed"];

/// The per-scan series of one scrape.
#[derive(Debug, Default, PartialEq)]
pub struct ScanSeries {
    /// Findings by severity of each scan's latest completed run.
    findings: Vec<(ScanLabels, [i64; SEVERITIES])>,
    /// When each scan last completed successfully (unix seconds).
    last_success: Vec<(ScanLabels, f64)>,
    /// When each scheduled scan's next run is due (unix seconds).
    next_run: Vec<(ScanLabels, f64)>,
    /// Failed attempts since each scan's last success.
    failures: Vec<(ScanLabels, i64)>,
    /// Scans by phase, in [`PHASES`] order.
    phases: [i64; PHASES.len()],
}

/// `namespace` and `nucleiscan`.
#[derive(Clone, Debug, PartialEq)]
struct ScanLabels(String, String);

impl ScanLabels {
    fn with<'a>(&'a self, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut labels = vec![
            ("namespace", self.0.as_str()),
            ("nucleiscan", self.1.as_str()),
        ];
        labels.extend_from_slice(more);
        labels
    }
}

impl ScanSeries {
    /// The series of `scans`.
    pub fn of<'a>(scans: impl IntoIterator<Item = &'a NucleiScan>) -> ScanSeries {
        let mut out = ScanSeries::default();
        let no_status = NucleiScanStatus::default();
        for scan in scans {
            let labels = ScanLabels(scan.namespace().unwrap_or_default(), scan.name_any());
            let status = scan.status.as_ref().unwrap_or(&no_status);
            let phase = match status.phase {
                None => 0,
                Some(ScanPhase::Pending) => 1,
                Some(ScanPhase::Running) => 2,
                Some(ScanPhase::Completed) => 3,
                Some(ScanPhase::Failed) => 4,
            };
            out.phases[phase] += 1;
            out.failures.push((
                labels.clone(),
                status.retry_count.unwrap_or(0).max(0).into(),
            ));
            if let Some(next) = &status.next_scheduled_time {
                out.next_run.push((labels.clone(), unix_seconds(next)));
            }
            if let Some(at) = status.last_success() {
                out.last_success.push((labels.clone(), unix_seconds(at)));
            }
            if let Some(summary) = &status.summary {
                // Findings an exception accepts do not count (the counts
                // of an earlier run say nothing of this one's).
                let all = by_severity(&summary.findings_by_severity);
                let accepted = if status.suppression_current() {
                    by_severity(&summary.suppressed_by_severity)
                } else {
                    [0; SEVERITIES]
                };
                let counted = std::array::from_fn(|i| (all[i] - accepted[i]).max(0));
                out.findings.push((labels, counted));
            }
        }
        out
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "nuclei_findings",
            "Findings of each scan's latest completed run, by severity (true totals, also when the stored list was cut), without those a NucleiFindingException accepts",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (scan, counts) in &self.findings {
            for (severity, n) in Severity::ALL.iter().zip(counts) {
                ConstGauge::new(*n).encode(
                    family.encode_family(&scan.with(&[("severity", severity.as_str())]))?,
                )?;
            }
        }
        gauges(
            encoder,
            "nuclei_scan_last_success_timestamp_seconds",
            "When each scan last completed successfully, in unix seconds",
            &self.last_success,
        )?;
        gauges(
            encoder,
            "nuclei_scan_next_run_timestamp_seconds",
            "When each scheduled scan's next run is due, in unix seconds",
            &self.next_run,
        )?;
        gauges(
            encoder,
            "nuclei_scan_consecutive_failures",
            "Failed attempts of each scan since its last success",
            &self.failures,
        )?;
        let mut family = encoder.encode_descriptor(
            "nuclei_scans",
            "Scans by phase (New: not yet picked up)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (phase, n) in PHASES.iter().zip(self.phases) {
            ConstGauge::new(n).encode(family.encode_family(&[("phase", *phase)])?)?;
        }
        Ok(())
    }
}

/// One gauge per scan.
fn gauges<N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(ScanLabels, N)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (scan, v) in values {
        ConstGauge::new(*v).encode(family.encode_family(&scan.with(&[]))?)?;
    }
    Ok(())
}

/// Counts by severity from `summary.findingsBySeverity`, which scanner pods
/// write: a key that is not one of the six severities counts as `unknown`,
/// so it never makes a new series and the totals stay true; negative
/// counts are read as 0.
fn by_severity(counts: &std::collections::BTreeMap<String, i64>) -> [i64; SEVERITIES] {
    let mut out = [0i64; SEVERITIES];
    for (key, n) in counts {
        let severity = key.parse::<Severity>().unwrap_or(Severity::Unknown);
        let i = Severity::ALL
            .iter()
            .position(|s| *s == severity)
            .expect("ALL holds every severity");
        out[i] = out[i].saturating_add((*n).max(0));
    }
    out
}

fn unix_seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    chrono(t).timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NucleiScanSpec, ScanSummary};
    use crate::scan::status::time;

    fn scan(ns: &str, name: &str, status: Option<NucleiScanStatus>) -> NucleiScan {
        let mut s = NucleiScan::new(name, NucleiScanSpec::default());
        s.metadata.namespace = Some(ns.into());
        s.status = status;
        s
    }

    fn at(secs: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
        Some(time(chrono::DateTime::from_timestamp(secs, 0).unwrap()))
    }

    fn summary(counts: &[(&str, i64)]) -> Option<ScanSummary> {
        Some(ScanSummary {
            total_findings: counts.iter().map(|(_, n)| n).sum(),
            findings_by_severity: counts.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            ..Default::default()
        })
    }

    fn metrics_with(scans: Vec<NucleiScan>) -> Metrics {
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        for s in scans {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(s));
        }
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        let m = Metrics::default();
        m.read_scans_from(reader);
        m
    }

    /// The sample lines of the exposition that start with `prefix`.
    fn samples(text: &str, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(String::from)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_exposition_names_the_design_metrics() {
        let m = Metrics::default();
        m.jobs_created.inc();
        let text = m.encode();
        for name in [
            "nuclei_scan_jobs_created_total 1",
            "nuclei_scan_job_duration_seconds",
            "nuclei_active_scan_jobs",
            "nuclei_build_info{version=\"",
            "nuclei_reconcile_errors_total{controller=\"nucleiscan\",error=\"write_status\"} 0",
            "nuclei_reconcile_errors_total{controller=\"ingress\",error=\"apply_scan\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        // A follower has no scan cache: no per-scan series at all.
        assert!(!text.contains("nuclei_findings"), "{text}");
    }

    #[test]
    fn a_new_leader_exports_no_scan_series_until_its_cache_is_filled() {
        let (reader, mut writer) = kube::runtime::reflector::store();
        let m = Metrics::default();
        m.read_scans_from(reader);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(scan(
            "a", "b", None,
        )));
        // Zeros now would read as every scan gone.
        assert!(!m.encode().contains("nuclei_scans"));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        assert!(m.encode().contains("nuclei_scans{phase=\"New\"} 1"));
    }

    #[test]
    fn findings_an_exception_accepts_do_not_count() {
        let mut sum = summary(&[("critical", 2), ("high", 3), ("info", 5)]).unwrap();
        sum.suppressed_findings = Some(4);
        sum.suppressed_run = at(1_700_000_000);
        sum.suppressed_by_severity = [("critical", 1), ("high", 3), ("low", 0)]
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        let marked = scan(
            "shop",
            "web-ingress",
            Some(NucleiScanStatus {
                phase: Some(ScanPhase::Completed),
                summary: Some(sum),
                last_success_time: at(1_700_000_000),
                ..Default::default()
            }),
        );
        let counted = |scan: NucleiScan| -> Vec<String> {
            samples(&metrics_with(vec![scan]).encode(), "nuclei_findings{")
                .into_iter()
                .filter(|s| !s.ends_with(" 0"))
                .collect()
        };
        assert_eq!(
            counted(marked.clone()),
            [
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"critical\"} 1",
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"info\"} 5",
            ]
        );
        // Counts taken of an earlier run (left by a scanner that did not
        // clear them) say nothing of this one: everything counts.
        let mut later = marked;
        later.status.as_mut().unwrap().last_success_time = at(1_700_000_100);
        assert_eq!(counted(later).len(), 3);
    }

    #[test]
    fn each_scan_exports_six_severities_of_its_last_completed_run() {
        let m = metrics_with(vec![
            scan(
                "shop",
                "web-ingress",
                Some(NucleiScanStatus {
                    // A later run is under way: the counts are still the
                    // last completed run's.
                    phase: Some(ScanPhase::Running),
                    summary: summary(&[("critical", 2), ("info", 5), ("high", 0)]),
                    last_success_time: at(1_700_000_000),
                    ..Default::default()
                }),
            ),
            scan("shop", "never-ran", None),
        ]);
        let text = m.encode();
        assert_eq!(
            samples(&text, "nuclei_findings{"),
            [
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"critical\"} 2",
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"high\"} 0",
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"info\"} 5",
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"low\"} 0",
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"medium\"} 0",
                "nuclei_findings{namespace=\"shop\",nucleiscan=\"web-ingress\",severity=\"unknown\"} 0",
            ]
        );
        assert_eq!(
            samples(&text, "nuclei_scans{"),
            [
                "nuclei_scans{phase=\"Completed\"} 0",
                "nuclei_scans{phase=\"Failed\"} 0",
                "nuclei_scans{phase=\"New\"} 1",
                "nuclei_scans{phase=\"Pending\"} 0",
                "nuclei_scans{phase=\"Running\"} 1",
            ]
        );
        assert_eq!(
            samples(&text, "nuclei_scan_last_success_timestamp_seconds{"),
            [
                "nuclei_scan_last_success_timestamp_seconds{namespace=\"shop\",nucleiscan=\"web-ingress\"} 1700000000.0"
            ]
        );
        assert_eq!(
            samples(&text, "nuclei_scan_consecutive_failures{"),
            [
                "nuclei_scan_consecutive_failures{namespace=\"shop\",nucleiscan=\"never-ran\"} 0",
                "nuclei_scan_consecutive_failures{namespace=\"shop\",nucleiscan=\"web-ingress\"} 0",
            ]
        );
    }

    #[test]
    fn a_scanner_written_severity_key_never_makes_a_new_series_and_still_counts() {
        let counts = [
            ("high", 1),
            ("HIGH ", 2),
            ("x-evil-1", 3),
            ("", 4),
            ("critical", -7),
        ]
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
        // critical, high, medium, low, info, unknown
        assert_eq!(by_severity(&counts), [0, 3, 0, 0, 0, 7]);
        let long = [("a".repeat(10_000), 1)].into_iter().collect();
        assert_eq!(by_severity(&long), [0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn failures_schedule_and_an_older_completed_status_are_read() {
        let series = ScanSeries::of(&[
            scan(
                "a",
                "failing",
                Some(NucleiScanStatus {
                    phase: Some(ScanPhase::Failed),
                    retry_count: Some(3),
                    completion_time: at(200),
                    next_scheduled_time: at(900),
                    ..Default::default()
                }),
            ),
            // Written before `lastSuccessTime` existed.
            scan(
                "a",
                "older",
                Some(NucleiScanStatus {
                    phase: Some(ScanPhase::Completed),
                    completion_time: at(100),
                    summary: summary(&[]),
                    ..Default::default()
                }),
            ),
        ]);
        let l = |n: &str| ScanLabels("a".into(), n.into());
        assert_eq!(series.failures, [(l("failing"), 3), (l("older"), 0)]);
        assert_eq!(series.next_run, [(l("failing"), 900.0)]);
        // A failed run's completion time is no success.
        assert_eq!(series.last_success, [(l("older"), 100.0)]);
        assert_eq!(series.findings, [(l("older"), [0; 6])]);
        assert_eq!(series.phases, [0, 0, 0, 1, 1]);
    }
}
