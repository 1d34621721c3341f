//! The `NucleiScan` custom resource (v1alpha1).
//!
//! Field names and JSON shapes match the Go operator's `NucleiScan`, so objects
//! it wrote keep deserializing; the additions (`tags`, `excludeTags`,
//! `excludeTemplates`, `rateLimit`, `summary.findingsTruncated`,
//! `summary.storedFindings`, `status.lastRescanRequest`, `status.retryCount`
//! semantics) are all optional.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Finding, Severity};
use crate::duration::{format_duration, parse_duration};
use crate::git::GitSource;

/// Largest number of targets one `NucleiScan` accepts (`spec.targets` `maxItems`).
///
/// Bounded so the apiserver can cost the CEL rule on each target.
pub const MAX_TARGETS: usize = 1000;

/// Longest accepted target URL (`spec.targets[*]` `maxLength`).
pub const MAX_TARGET_LEN: usize = 2048;

/// Smallest accepted `spec.rateLimit` (requests per second).
pub const MIN_RATE_LIMIT: i32 = 1;

/// Largest accepted `spec.rateLimit` (requests per second).
pub const MAX_RATE_LIMIT: i32 = 10_000;
/// Largest `status.retryCount` (the CRD's maximum; counting stops there).
pub const MAX_RETRY_COUNT: i32 = 10_000;

/// The CEL rule the apiserver applies to every entry of `spec.targets`.
///
/// [`is_valid_target`] is the same check in Rust; keep the two in step.
pub const TARGET_RULE: &str = r"self.matches(r'^https?://[^\s/?#]+([/?#]\S*)?$')";

/// The message the apiserver reports when [`TARGET_RULE`] fails.
pub const TARGET_RULE_MESSAGE: &str =
    "each target must be an absolute http:// or https:// URL with a host and no white space";

/// Desired state of a `NucleiScan`: what to scan, with which templates, and when.
// Clippy reads the repeated `printcolumn(type_ = …)` entries as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nuclei.homelab.mortenolsen.pro",
    version = "v1alpha1",
    kind = "NucleiScan",
    plural = "nucleiscans",
    singular = "nucleiscan",
    namespaced,
    status = "NucleiScanStatus",
    shortname = "nscan",
    category = "nuclei",
    category = "security",
    derive = "PartialEq",
    doc = "NucleiScan keeps the web endpoints of one Ingress, VirtualService or HTTPRoute scanned with nuclei. The operator creates one per exposed source object; the scanner writes its findings into the status.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Findings",
        type_ = "integer",
        json_path = ".status.summary.totalFindings"
    ),
    printcolumn(
        name = "Critical",
        type_ = "integer",
        json_path = ".status.summary.findingsBySeverity.critical"
    ),
    printcolumn(
        name = "High",
        type_ = "integer",
        json_path = ".status.summary.findingsBySeverity.high"
    ),
    printcolumn(
        name = "Medium",
        type_ = "integer",
        json_path = ".status.summary.findingsBySeverity.medium",
        priority = "1"
    ),
    printcolumn(
        name = "Low",
        type_ = "integer",
        json_path = ".status.summary.findingsBySeverity.low",
        priority = "1"
    ),
    // A string, not a date: kubectl prints a future date as "<invalid>".
    printcolumn(
        name = "Next scan",
        type_ = "string",
        json_path = ".status.nextScheduledTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NucleiScanSpec {
    /// The Ingress, VirtualService or HTTPRoute whose endpoints this scan covers.
    pub source_ref: SourceRef,

    /// URLs to scan, derived from the source object. At least one; each an
    /// absolute http:// or https:// URL.
    #[schemars(
        length(min = 1, max = 1000),
        inner(length(max = 2048)),
        transform = target_items_rule
    )]
    pub targets: Vec<String>,

    /// Nuclei templates to run (paths or template ids, passed to `-t`). Empty:
    /// the operator's default template set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(max = 256)),
        transform = template_path_items_rule
    )]
    pub templates: Vec<String>,

    /// Only run templates of these severities (passed to `-severity`). Empty:
    /// every severity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<Severity>,

    /// When to rescan: a standard 5-field cron expression in UTC
    /// (`minute hour day-of-month month day-of-week`), a descriptor such as
    /// `@daily`, or `@every <duration>`. Empty: scan once, then rescan when the
    /// result is older than the operator's rescan age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub schedule: Option<String>,

    /// Stop scheduled rescans. A running scan is not interrupted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Overrides for the scanner pod of this scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanner_config: Option<ScannerConfig>,

    /// Only run templates with at least one of these tags (passed to `-tags`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,

    /// Skip templates with any of these tags (passed to `-exclude-tags`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tags: Vec<String>,

    /// Skip these templates or template directories (passed to
    /// `-exclude-templates`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(max = 256)),
        transform = template_path_items_rule
    )]
    pub exclude_templates: Vec<String>,

    /// Maximum requests per second nuclei sends (passed to `-rate-limit`).
    /// Unset: the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub rate_limit: Option<i32>,
}

/// Kind of object a `NucleiScan` was derived from.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum SourceKind {
    /// A `networking.k8s.io/v1` Ingress.
    #[default]
    Ingress,
    /// An Istio `networking.istio.io` VirtualService.
    VirtualService,
    /// A Gateway API `gateway.networking.k8s.io` HTTPRoute.
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

impl SourceKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Ingress => "Ingress",
            SourceKind::VirtualService => "VirtualService",
            SourceKind::HttpRoute => "HTTPRoute",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies the Ingress, VirtualService or HTTPRoute a scan belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// API version of the source object, e.g. `networking.k8s.io/v1`.
    pub api_version: String,
    /// Kind of the source object.
    pub kind: SourceKind,
    /// Name of the source object.
    pub name: String,
    /// Namespace of the source object.
    pub namespace: String,
    /// UID of the source object; a recreated object has a new one.
    pub uid: String,
}

/// Per-scan overrides for the scanner pod. Unset fields fall back to the
/// operator's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScannerConfig {
    /// Scanner container image (must contain nuclei and the operator binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// CPU and memory requests and limits of the scanner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Longest a scan may run, as a Go duration such as `30m` or `1h30m0s`;
    /// also the Job's active deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        regex(
            pattern = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))*$"
        )
    )]
    pub timeout: Option<String>,

    /// Git repositories of extra templates, cloned into the scanner pod before
    /// the scan: `URL[#REF[:PATH]]`, where URL is `https://`, `http://`,
    /// `ssh://`, `git://` or `user@host:path`, REF a branch, tag or full
    /// commit id (default: the remote's default branch) and PATH a directory
    /// in the repository (default: all of it), as in
    /// `https://github.com/acme/t.git#v2:http/cves`. Every template there runs,
    /// on top of `templates` (still subject to the tag, severity and exclusion
    /// filters). Not available in sync mode.
    #[serde(
        default,
        rename = "templateURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub template_urls: Vec<String>,

    /// ConfigMaps in the scan's namespace whose keys are nuclei templates
    /// (e.g. `my-check.yaml`). Each is mounted read-only into the scanner pod
    /// and every template in it runs, on top of `templates` (still subject to
    /// the tag, severity and exclusion filters). A missing ConfigMap keeps the
    /// scanner pod from starting. Not available in sync mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub template_config_maps: Vec<String>,

    /// Node labels the scanner pod must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the scanner pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl ScannerConfig {
    /// The `timeout` parsed and bounds-checked with
    /// [`parse_timeout`]; `Ok(None)` when unset.
    pub fn parsed_timeout(&self) -> Result<Option<Duration>, String> {
        self.timeout.as_deref().map(parse_timeout).transpose()
    }
}

/// Lifecycle phase of a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ScanPhase {
    /// Wanted, waiting in the queue for a free slot.
    Pending,
    /// A scanner Job (or in-process scan) is running.
    Running,
    /// The scanner finished and wrote its findings.
    Completed,
    /// nuclei failed, the Job failed or ran out of time, or retries ran out.
    Failed,
}

impl ScanPhase {
    /// The phase name as stored in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanPhase::Pending => "Pending",
            ScanPhase::Running => "Running",
            ScanPhase::Completed => "Completed",
            ScanPhase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for ScanPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a `NucleiScan`. Every field is optional: an empty status
/// serializes as `{}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NucleiScanStatus {
    /// Current phase: Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ScanPhase>,

    /// Latest observations of the scan's state, one per condition type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,

    /// Findings of the last completed scan, most severe first. May be cut to
    /// keep the object small: see `summary.findingsTruncated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,

    /// Counts of the last completed scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ScanSummary>,

    /// Fingerprints of every finding of the last completed scan, stored or
    /// not (16 hex digits each, sorted, run together): what the next run's
    /// new and resolved counts compare with. Absent after a run with more
    /// than 6,000 distinct findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 96000))]
    pub fingerprints: Option<String>,

    /// The Job running, or that last ran, this scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_ref: Option<JobRef>,

    /// When the scanner started scanning in the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_start_time: Option<Time>,

    /// The git repositories of templates the last run used (the operator's
    /// TEMPLATE_REPOSITORIES, then `templateURLs`), with the commit each
    /// clone checked out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub template_sources: Vec<TemplateSource>,

    /// When the last scan was started (its Job created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan_time: Option<Time>,

    /// When the last scan finished, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the last successful scan finished (the run `findings` and
    /// `summary` come from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,

    /// When the next scheduled scan is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_time: Option<Time>,

    /// Why the last scan failed; cleared by a successful one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,

    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// Consecutive failed attempts; reset by a successful scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub retry_count: Option<i32>,

    /// Token of the run this status belongs to (the run in progress while
    /// Running). A scanner writes the status only while it names its run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub run_token: Option<String>,

    /// When the last retry after a failure was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retry_time: Option<Time>,

    /// Value of the manual-rescan annotation
    /// (`nuclei.homelab.mortenolsen.pro/rescan`) last acted on; a different
    /// value requests another scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rescan_request: Option<String>,

    /// `lastSuccessTime` of the last run whose new findings were announced
    /// (the `NewFindings` Event, notifiers), so that no run is announced
    /// twice, also across operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_run: Option<Time>,
}

impl NucleiScanStatus {
    /// When the run `findings` and `summary` show finished: `lastSuccessTime`,
    /// or, in a status written before that field existed, the completion
    /// time while the scan is Completed. `None` before a first success.
    pub fn last_success(&self) -> Option<&Time> {
        self.last_success_time.as_ref().or(self
            .completion_time
            .as_ref()
            .filter(|_| self.phase == Some(ScanPhase::Completed)))
    }

    /// Whether the summary's suppressed counts were taken of the run it
    /// shows (an exception checked after that run; see `crate::suppress`).
    pub fn suppression_current(&self) -> bool {
        self.summary.as_ref().is_some_and(|s| {
            s.suppressed_findings.is_some()
                && s.suppressed_run.is_some()
                && s.suppressed_run.as_ref() == self.last_success()
        })
    }
}

/// Aggregate counts of one scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScanSummary {
    /// Number of findings nuclei reported: the true total, also when
    /// `status.findings` was cut.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub total_findings: i64,

    /// Findings per severity name (critical, high, medium, low, info,
    /// unknown), counting every finding, stored or not.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = non_negative_values)]
    pub findings_by_severity: BTreeMap<String, i64>,

    /// Number of targets scanned.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub targets_scanned: i64,

    /// How long the scan took, in seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub duration_seconds: i64,

    /// True when `status.findings` holds fewer findings than `totalFindings`
    /// (the least severe were dropped to keep the object small).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub findings_truncated: bool,

    /// Number of findings kept in `status.findings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub stored_findings: Option<i64>,

    /// Distinct findings the previous completed scan did not have (all of
    /// them on a first scan). Absent when the previous scan's findings are
    /// not known (see `status.fingerprints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub new_findings: Option<i64>,

    /// Distinct findings the previous completed scan had too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub unchanged_findings: Option<i64>,

    /// Findings of the previous completed scan that this one did not find.
    /// A failed scan resolves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub resolved_findings: Option<i64>,

    /// Stored findings a `NucleiFindingException` accepts (marked
    /// `suppressedBy`). Absent when no exception was checked against this
    /// scan's findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub suppressed_findings: Option<i64>,

    /// `suppressedFindings` per severity name; `findingsBySeverity` still
    /// counts them (metrics subtract them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = non_negative_values)]
    pub suppressed_by_severity: BTreeMap<String, i64>,

    /// The `lastSuccessTime` of the run the suppressed counts were taken
    /// of: they hold only while it is the status's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_run: Option<Time>,

    /// Targets the target policy refused when the scan ran (their host
    /// resolved to a denied address), each with the reason; the first
    /// 10 of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(max = 1024)))]
    pub refused_targets: Vec<String>,
}

/// Most entries of `summary.refusedTargets`.
pub const MAX_REFUSED_LISTED: usize = 10;

/// A git repository of templates and the commit a run used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSource {
    #[serde(flatten)]
    pub source: GitSource,
    /// The commit the clone checked out; unset when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Why the run went without this repository (one of the operator's
    /// that could not be cloned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub error: Option<String>,
}

/// The scanner Job of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// Name of the Job, in the scan's namespace.
    pub name: String,
    /// UID of the Job.
    pub uid: String,
    /// Name of the scanner pod, for `kubectl logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When the Job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Gives the values of a map of counts a minimum of 0 (schemars' `inner`
/// does not reach map values).
fn non_negative_values(schema: &mut schemars::Schema) {
    if let Some(values) = schema
        .get_mut("additionalProperties")
        .and_then(|v| v.as_object_mut())
    {
        values.insert("minimum".into(), 0.into());
    }
}

/// CEL rule on `spec.templates` and `spec.excludeTemplates` entries: a path
/// inside the templates directory, never an absolute path or one that climbs
/// out of it with `..` (nuclei would read any file of the scanner pod, its
/// ServiceAccount token included, and echo it in its errors).
pub const TEMPLATE_PATH_RULE: &str = r"!self.startsWith('/') && !self.matches(r'(^|/)\.\.(/|$)')";

/// The message the apiserver reports when [`TEMPLATE_PATH_RULE`] fails.
pub const TEMPLATE_PATH_RULE_MESSAGE: &str =
    "must be a template id or a path inside the templates directory: not absolute, no '..'";

/// Whether `path` passes [`TEMPLATE_PATH_RULE`].
pub fn is_template_path(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|segment| segment == "..")
}

fn template_path_items_rule(schema: &mut schemars::Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([{ "rule": TEMPLATE_PATH_RULE, "message": TEMPLATE_PATH_RULE_MESSAGE }]),
        );
    }
}

/// Puts [`TARGET_RULE`] on the items of `spec.targets`, so a bad entry is
/// reported with its index.
fn target_items_rule(schema: &mut schemars::Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([{ "rule": TARGET_RULE, "message": TARGET_RULE_MESSAGE }]),
        );
    }
}

/// Whether `target` passes the CRD's check on `spec.targets` entries
/// ([`TARGET_RULE`] and [`MAX_TARGET_LEN`]).
pub fn is_valid_target(target: &str) -> bool {
    if target.len() > MAX_TARGET_LEN {
        return false;
    }
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return false;
    };
    // RE2's \s is exactly ASCII [\t\n\f\r ], the same set as is_ascii_whitespace.
    if rest.chars().any(|c| c.is_ascii_whitespace()) {
        return false;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    authority_end > 0
}

/// Shortest scan timeout accepted (Job deadlines are whole seconds).
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest scan timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Parses a scan timeout: a Go duration from [`MIN_TIMEOUT`] to
/// [`MAX_TIMEOUT`]. The same bounds apply to annotations and
/// `spec.scannerConfig.timeout`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("a timeout of zero would stop the scan before it starts".to_owned());
    }
    if d < MIN_TIMEOUT {
        return Err(format!(
            "timeout {} is below the minimum of {}",
            format_duration(d),
            format_duration(MIN_TIMEOUT)
        ));
    }
    if d > MAX_TIMEOUT {
        return Err(format!(
            "timeout {} is above the maximum of {} (24h)",
            format_duration(d),
            format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    fn schema() -> Value {
        let crd = NucleiScan::crd();
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema");
        serde_json::to_value(schema).unwrap()
    }

    fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, key| &v[*key])
    }

    #[test]
    fn the_short_name_is_nscan_and_never_ns() {
        let crd = NucleiScan::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["nscan".to_string()]));
        assert_eq!(crd.spec.names.plural, "nucleiscans");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.group, "nuclei.homelab.mortenolsen.pro");
    }

    #[test]
    fn the_status_subresource_is_enabled() {
        let crd = NucleiScan::crd();
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn printer_columns_show_phase_findings_by_severity_next_scan_and_age() {
        let crd = NucleiScan::crd();
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap();
        let got: Vec<(&str, &str, &str, i32)> = cols
            .iter()
            .map(|c| {
                let priority = c.priority.unwrap_or(0);
                (
                    c.name.as_str(),
                    c.type_.as_str(),
                    c.json_path.as_str(),
                    priority,
                )
            })
            .collect();
        let severity = |name, key| {
            let priority = if name == "Medium" || name == "Low" {
                1
            } else {
                0
            };
            (name, "integer", key, priority)
        };
        assert_eq!(
            got,
            vec![
                ("Phase", "string", ".status.phase", 0),
                ("Findings", "integer", ".status.summary.totalFindings", 0),
                severity("Critical", ".status.summary.findingsBySeverity.critical"),
                severity("High", ".status.summary.findingsBySeverity.high"),
                // `-o wide` only.
                severity("Medium", ".status.summary.findingsBySeverity.medium"),
                severity("Low", ".status.summary.findingsBySeverity.low"),
                ("Next scan", "string", ".status.nextScheduledTime", 0),
                ("Age", "date", ".metadata.creationTimestamp", 0),
            ]
        );
        // `kubectl get nuclei` / `kubectl get security` list our scans.
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["nuclei".to_string(), "security".to_string()])
        );
    }

    #[test]
    fn the_severity_enum_sits_on_the_items_not_on_the_array() {
        let s = schema();
        let sev = at(&s, &["properties", "spec", "properties", "severity"]);
        assert_eq!(sev["type"], "array");
        assert!(sev.get("enum").is_none(), "enum on the array: {sev}");
        assert_eq!(sev["items"]["type"], "string");
        let mut items: Vec<&str> = sev["items"]["enum"]
            .as_array()
            .expect("enum on the items")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        items.sort();
        assert_eq!(
            items,
            ["critical", "high", "info", "low", "medium", "unknown"]
        );
    }

    #[test]
    fn targets_need_at_least_one_http_url_and_are_bounded() {
        let s = schema();
        let spec = at(&s, &["properties", "spec"]);
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"targets"));
        assert!(required.contains(&"sourceRef"));
        let targets = &spec["properties"]["targets"];
        assert_eq!(targets["minItems"], 1);
        assert_eq!(targets["maxItems"], MAX_TARGETS);
        assert_eq!(targets["items"]["maxLength"], MAX_TARGET_LEN);
        assert_eq!(
            targets["items"]["x-kubernetes-validations"],
            json!([{ "rule": TARGET_RULE, "message": TARGET_RULE_MESSAGE }])
        );
    }

    #[test]
    fn source_kind_is_an_enum_of_ingress_and_virtual_service() {
        let s = schema();
        let kind = at(
            &s,
            &[
                "properties",
                "spec",
                "properties",
                "sourceRef",
                "properties",
                "kind",
            ],
        );
        assert_eq!(
            kind["enum"],
            json!(["Ingress", "VirtualService", "HTTPRoute"])
        );
    }

    #[test]
    fn rate_limit_is_bounded() {
        let s = schema();
        let rl = at(&s, &["properties", "spec", "properties", "rateLimit"]);
        assert_eq!(rl["type"], "integer");
        assert_eq!(rl["minimum"].as_f64(), Some(f64::from(MIN_RATE_LIMIT)));
        assert_eq!(rl["maximum"].as_f64(), Some(f64::from(MAX_RATE_LIMIT)));
    }

    #[test]
    fn resource_quantities_are_int_or_string() {
        let s = schema();
        let res = at(
            &s,
            &[
                "properties",
                "spec",
                "properties",
                "scannerConfig",
                "properties",
                "resources",
                "properties",
            ],
        );
        for which in ["limits", "requests"] {
            let q = &res[which]["additionalProperties"];
            assert_eq!(q["x-kubernetes-int-or-string"], true, "{which}: {q}");
        }
    }

    #[test]
    fn counts_cannot_be_negative() {
        let s = schema();
        let summary = at(
            &s,
            &[
                "properties",
                "status",
                "properties",
                "summary",
                "properties",
            ],
        );
        for field in [
            "totalFindings",
            "targetsScanned",
            "durationSeconds",
            "storedFindings",
        ] {
            assert_eq!(summary[field]["minimum"].as_f64(), Some(0.0), "{field}");
        }
        assert_eq!(
            summary["findingsBySeverity"]["additionalProperties"]["minimum"].as_f64(),
            Some(0.0)
        );
    }

    #[test]
    fn conditions_are_a_map_list_keyed_by_type() {
        let s = schema();
        let c = at(&s, &["properties", "status", "properties", "conditions"]);
        assert_eq!(c["x-kubernetes-list-type"], "map");
        assert_eq!(c["x-kubernetes-list-map-keys"], json!(["type"]));
    }

    #[test]
    fn the_phase_is_an_enum_of_the_four_phases() {
        let s = schema();
        let p = at(&s, &["properties", "status", "properties", "phase"]);
        assert_eq!(
            p["enum"],
            json!(["Pending", "Running", "Completed", "Failed"])
        );
    }

    /// Walks the schema and checks the structural-schema rules a real
    /// kube-apiserver enforces: every node has a type (or int-or-string /
    /// preserve-unknown-fields), no `$ref`, no `anyOf`/`oneOf`/`allOf` without
    /// types, every property documented.
    #[test]
    fn the_schema_is_structural_and_documented() {
        fn walk(path: &str, v: &Value, problems: &mut Vec<String>, needs_doc: bool) {
            let Some(obj) = v.as_object() else {
                problems.push(format!("{path}: schema is not an object"));
                return;
            };
            for banned in ["$ref", "definitions", "$defs", "oneOf", "anyOf", "allOf"] {
                if obj.contains_key(banned) {
                    problems.push(format!("{path}: has {banned}"));
                }
            }
            let typed = obj.contains_key("type")
                || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if !typed {
                problems.push(format!("{path}: no type"));
            }
            if needs_doc && !obj.contains_key("description") {
                problems.push(format!("{path}: no description"));
            }
            if let Some(props) = obj.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    walk(&format!("{path}.{k}"), p, problems, needs_doc);
                }
            }
            // Items and map values are described by their field; k8s-openapi's
            // types below them carry the upstream docs.
            if let Some(items) = obj.get("items") {
                walk(&format!("{path}[]"), items, problems, false);
            }
            if let Some(ap) = obj.get("additionalProperties")
                && ap.is_object()
            {
                walk(&format!("{path}{{}}"), ap, problems, false);
            }
        }
        let s = schema();
        let mut problems = Vec::new();
        for top in ["spec", "status"] {
            walk(
                &format!(".{top}"),
                &s["properties"][top],
                &mut problems,
                true,
            );
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn an_empty_status_serializes_as_an_empty_object() {
        assert_eq!(
            serde_json::to_value(NucleiScanStatus::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::to_value(ScanSummary::default()).unwrap(),
            json!({ "totalFindings": 0, "targetsScanned": 0 })
        );
    }

    #[test]
    fn a_go_operator_object_deserializes() {
        let go = json!({
            "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
            "kind": "NucleiScan",
            "metadata": { "name": "myapp-scan", "namespace": "default" },
            "spec": {
                "sourceRef": {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "Ingress",
                    "name": "myapp",
                    "namespace": "default",
                    "uid": "abc-123"
                },
                "targets": ["https://myapp.example.com"],
                "schedule": "@every 24h",
                "scannerConfig": {
                    "image": "ghcr.io/example/scanner:1",
                    "timeout": "30m0s",
                    "templateURLs": ["https://github.com/example/templates"],
                    "resources": { "limits": { "cpu": "1", "memory": "512Mi" } }
                }
            },
            "status": {
                "phase": "Completed",
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "ScanCompleted",
                    "message": "done", "lastTransitionTime": "2025-01-01T00:00:00Z"
                }],
                "summary": {
                    "totalFindings": 2,
                    "findingsBySeverity": { "high": 1, "info": 1 },
                    "targetsScanned": 1,
                    "durationSeconds": 42
                },
                "findings": [{
                    "templateId": "git-config",
                    "severity": "high",
                    "host": "https://myapp.example.com",
                    "timestamp": "2025-01-01T00:00:00Z",
                    "metadata": { "anything": ["goes"] }
                }],
                "jobRef": { "name": "myapp-scan-abc", "uid": "u1", "podName": "p" },
                "observedGeneration": 3,
                "retryCount": 0,
                "lastRetryTime": "2025-01-01T00:00:00Z"
            }
        });
        let scan: NucleiScan = serde_json::from_value(go).unwrap();
        assert_eq!(scan.spec.source_ref.kind, SourceKind::Ingress);
        let cfg = scan.spec.scanner_config.as_ref().unwrap();
        assert_eq!(cfg.parsed_timeout(), Ok(Some(Duration::from_secs(30 * 60))));
        assert_eq!(cfg.template_urls.len(), 1);
        let status = scan.status.unwrap();
        assert_eq!(status.phase, Some(ScanPhase::Completed));
        assert_eq!(status.summary.unwrap().findings_by_severity["high"], 1);
        assert_eq!(status.findings[0].severity, Some(Severity::High));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn a_spec_round_trips_with_go_field_names() {
        let spec = NucleiScanSpec {
            source_ref: SourceRef {
                api_version: "networking.istio.io/v1".into(),
                kind: SourceKind::VirtualService,
                name: "web".into(),
                namespace: "prod".into(),
                uid: "u".into(),
            },
            targets: vec!["https://web.example.com".into()],
            severity: vec![Severity::High, Severity::Critical],
            scanner_config: Some(ScannerConfig {
                template_urls: vec!["https://example.com/t.git".into()],
                ..Default::default()
            }),
            exclude_tags: vec!["dos".into()],
            rate_limit: Some(50),
            ..Default::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            json!({
                "sourceRef": {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "name": "web",
                    "namespace": "prod",
                    "uid": "u"
                },
                "targets": ["https://web.example.com"],
                "severity": ["high", "critical"],
                "scannerConfig": { "templateURLs": ["https://example.com/t.git"] },
                "excludeTags": ["dos"],
                "rateLimit": 50
            })
        );
        let back: NucleiScanSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn target_validation_matches_the_crd_rule() {
        let cases = [
            ("https://a.example.com", true),
            ("http://a.example.com/path?q=1#f", true),
            ("http://localhost:8080", true),
            ("https://[::1]:8443/x", true),
            ("https://a.example.com/", true),
            ("ftp://a.example.com", false),
            ("HTTPS://a.example.com", false),
            ("https://", false),
            ("https:///path", false),
            ("a.example.com", false),
            ("https://a.example.com/a b", false),
            ("https://a.example.com\n", false),
            ("", false),
        ];
        for (target, want) in cases {
            assert_eq!(is_valid_target(target), want, "{target:?}");
        }
        let long = format!("https://a.example.com/{}", "x".repeat(MAX_TARGET_LEN));
        assert!(!is_valid_target(&long));
    }
}
