//! The operator's vocabulary on Kubernetes objects: the field managers of
//! its writes, and the labels and annotations it sets or reads on scans,
//! Jobs, reports, RBAC objects and notifier Secrets, each spelled once.
//! (The annotations users set on Ingresses, VirtualServices and HTTPRoutes
//! are in [`crate::sources::annotations`], with their parser.)

use std::collections::BTreeMap;

/// Field manager of the operator's server-side applies and status patches.
pub const FIELD_MANAGER: &str = "nuclei-operator";
/// Field manager of the CRD upgrade (`nuclei-operator crd --apply`).
pub const CRD_UPGRADE_MANAGER: &str = "nuclei-operator-crd-upgrade";
/// Field manager of the spec fields carried over from a Go operator's
/// scan, so that later applies of the source keep them.
pub const MIGRATION_MANAGER: &str = "nuclei-operator-migration";

/// Marks everything the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "nuclei-operator";
/// What part of the operator an object belongs to.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The [`COMPONENT_LABEL`] of scanner Jobs and pods.
pub const COMPONENT_SCANNER: &str = "scanner";
/// On a CRD: the operator version that defined it (the pre-upgrade hook
/// never replaces a newer one).
pub const CRD_VERSION_LABEL: &str = "app.kubernetes.io/version";

/// On a scanner Job and pod: the scan's name (cut to a label value).
pub const SCAN_LABEL: &str = "nuclei.homelab.mortenolsen.pro/scan";
/// On a scanner Job and pod: the run token of the run.
pub const RUN_LABEL: &str = "nuclei.homelab.mortenolsen.pro/run";
/// On a scanner Job: `namespace/name` of its scan, whole.
pub const SCAN_KEY_ANNOTATION: &str = "nuclei.homelab.mortenolsen.pro/scan-key";
/// On a NucleiScan: the kind of the source it scans.
pub const SOURCE_KIND_LABEL: &str = "nuclei.homelab.mortenolsen.pro/source-kind";
/// On a NucleiScan: a hash of the body last applied from its source.
pub const APPLIED_HASH: &str = "nuclei.homelab.mortenolsen.pro/applied-hash";
/// On a NucleiScan: the source's annotation errors, when it has some.
pub const ANNOTATION_ERRORS: &str = "nuclei.homelab.mortenolsen.pro/annotation-errors";

/// On a policy report: the run it shows (see `crate::reports::run_marker`).
pub const REPORT_RUN_ANNOTATION: &str = "nuclei.homelab.mortenolsen.pro/run";
/// On a policy report: set when its results were cut.
pub const REPORT_TRUNCATED_ANNOTATION: &str = "nuclei.homelab.mortenolsen.pro/results-truncated";

/// On a Secret: makes it a notifier of this type (slack, teams, webhook).
pub const NOTIFIER_LABEL: &str = "nuclei.homelab.mortenolsen.pro/notifier";
/// On a notifier Secret: the least severity worth a message.
pub const NOTIFY_MIN_SEVERITY: &str = "nuclei.homelab.mortenolsen.pro/min-severity";
/// On a notifier Secret: also tell of resolved findings.
pub const NOTIFY_RESOLVED: &str = "nuclei.homelab.mortenolsen.pro/notify-resolved";

/// Manual rescan request: any new value asks for one more scan now (e.g.
/// `kubectl annotate --overwrite … nuclei.homelab.mortenolsen.pro/rescan="$(date +%s)"`).
/// The value last acted on is kept in `status.lastRescanRequest`.
pub const RESCAN: &str = "nuclei.homelab.mortenolsen.pro/rescan";

/// The manual rescan request on an object: the trimmed value of [`RESCAN`],
/// `None` when absent or empty.
pub fn rescan_request(annotations: &BTreeMap<String, String>) -> Option<&str> {
    annotations
        .get(RESCAN)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rescan_request_is_its_trimmed_value() {
        assert_eq!(
            rescan_request(&[(RESCAN.to_owned(), " 42 ".to_owned())].into()),
            Some("42")
        );
        assert_eq!(
            rescan_request(&[(RESCAN.to_owned(), "  ".to_owned())].into()),
            None
        );
        assert_eq!(rescan_request(&BTreeMap::new()), None);
    }
}
