//! Prometheus metrics (DESIGN §7).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// Label of the findings counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: String,
}

/// Label of the reconcile-error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    pub error: String,
}

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
    pub findings: Family<SeverityLabel, Counter>,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
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
        let findings = Family::<SeverityLabel, Counter>::default();
        let reconcile_errors = Family::<ErrorLabel, Counter>::default();
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
            "nuclei_findings",
            "Findings reported by finished scans, by severity",
            findings.clone(),
        );
        registry.register(
            "nuclei_reconcile_errors",
            "Failed reconciles by controller and error kind",
            reconcile_errors.clone(),
        );
        Metrics {
            registry,
            jobs_created,
            job_duration,
            active_jobs,
            queue_depth,
            queue_scheduled,
            queue_wait,
            outcomes,
            findings,
            reconcile_errors,
        }
    }
}

impl Metrics {
    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_design_metrics() {
        let m = Metrics::default();
        m.jobs_created.inc();
        let text = m.encode();
        for name in [
            "nuclei_scan_jobs_created_total 1",
            "nuclei_scan_job_duration_seconds",
            "nuclei_active_scan_jobs",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
