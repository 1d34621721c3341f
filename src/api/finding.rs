//! One nuclei result as stored in `NucleiScan.status.findings`, and severities.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Severity of a nuclei template, as nuclei names it.
///
/// `Ord` sorts most severe first: `Critical < High < … < Unknown`, so a plain
/// `sort()` puts the findings that matter at the top.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
    Unknown,
}

impl Severity {
    /// Every severity, most severe first.
    pub const ALL: [Severity; 6] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
        Severity::Unknown,
    ];

    /// The lowercase name nuclei and the CRD use.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
            Severity::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    /// Parses a severity name, ignoring ASCII case and surrounding white space.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Severity::ALL
            .into_iter()
            .find(|sev| sev.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                format!(
                    "unknown severity {t:?} (expected one of info, low, medium, high, critical, unknown)"
                )
            })
    }
}

/// A single nuclei finding. Field names match the Go operator's `Finding`, plus
/// the classification and matcher it dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Nuclei template identifier (`template-id`).
    pub template_id: String,
    /// Human-readable template name (`info.name`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_name: String,
    /// Severity of the finding (`info.severity`).
    pub severity: Option<Severity>,
    /// Protocol of the template: http, dns, ssl, …
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Host that was scanned.
    #[serde(default)]
    pub host: String,
    /// URL or endpoint where the template matched.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub matched_at: String,
    /// Name of the matcher that fired, when the template has several.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub matcher_name: String,
    /// Values the template extracted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extracted_results: Vec<String>,
    /// Template description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Reference URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<String>,
    /// Template tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// CVE identifiers from `info.classification.cve-id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cve_ids: Vec<String>,
    /// CWE identifiers from `info.classification.cwe-id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cwe_ids: Vec<String>,
    /// CVSS score from `info.classification.cvss-score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvss_score: Option<f64>,
    /// When nuclei reported the finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Identifies the finding across runs: a hash of template id, matcher
    /// name, host and matched-at (16 hex digits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 16))]
    pub fingerprint: String,
    /// When a run of this scan first found it (kept while every run since
    /// found it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Time>,
    /// The `NucleiFindingException` that accepts this finding: it does not
    /// count in metrics, Events or notifications while that one is active.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    pub suppressed_by: String,
}
