//! The `NucleiFindingException` custom resource (v1alpha1): findings a
//! namespace's owners accepted, with the reason, who accepted them and
//! until when. What it does to scans is in [`crate::suppress`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `spec.target` pattern.
pub const MAX_PATTERN_LEN: usize = 2048;

/// Accepts the findings of the scans in its namespace that match a template
/// id and/or a target pattern, until it expires.
// Clippy reads the repeated `printcolumn(type_ = …)` entries as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nuclei.homelab.mortenolsen.pro",
    version = "v1alpha1",
    kind = "NucleiFindingException",
    plural = "nucleifindingexceptions",
    singular = "nucleifindingexception",
    namespaced,
    status = "NucleiFindingExceptionStatus",
    shortname = "nfex",
    category = "nuclei",
    category = "security",
    derive = "PartialEq",
    doc = "NucleiFindingException accepts findings of the NucleiScans in its namespace: those of a template, at a target, or both, with a reason, who accepted them and an optional expiry. Accepted findings stay in the scan's status marked as suppressed and do not count in metrics, Events or notifications until the exception expires or is deleted.",
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.templateId"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expires"),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Active\")].status"
    ),
    printcolumn(
        name = "Suppressed",
        type_ = "integer",
        json_path = ".status.suppressedFindings"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NucleiFindingExceptionSpec {
    /// Template id of the accepted findings (exact, e.g. `git-config`).
    /// Empty: any template at `target`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub template_id: String,

    /// Where, ignoring ASCII case; `*` stands for any run of characters. A
    /// pattern with a scheme is matched against each finding's URLs
    /// (`https://shop.example.com/admin*`), one without against their hosts
    /// (`*.internal.example.com`, `shop.example.com`). Empty: `templateId`
    /// on every target.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 2048))]
    pub target: String,

    /// Why the findings are accepted.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,

    /// Who accepted them.
    #[schemars(length(min = 1, max = 256))]
    pub accepted_by: String,

    /// When the acceptance ends; the findings count again from then on.
    /// Absent: until the exception is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

/// What the operator observed of a `NucleiFindingException`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NucleiFindingExceptionStatus {
    /// `Active`: True while it suppresses findings; False with reason
    /// `Expired` or `Invalid` (the message says what is wrong).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Findings stored in the namespace's scans that it suppresses now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub suppressed_findings: Option<i64>,

    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
