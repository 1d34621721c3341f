//! Adopting the scans the Go operator (`homelab-nuclei-operator`) left.
//!
//! It named the scan of an Ingress or VirtualService `<source>-scan`; this
//! operator names it `<source>-<kind>` ([`super::targets::scan_name`]). Left
//! alone, an upgraded cluster scans every source twice: the old scan stays,
//! owned by its source, and the scan controller runs it like any other.
//!
//! So when a source reconcile finds the old scan of its source (the name,
//! a controller owner reference to the source's uid, and no
//! `app.kubernetes.io/managed-by` label of ours) it carries over to the new
//! scan what the annotations do not say again, then deletes the old one:
//! - spec fields set on the old scan by hand (a schedule, `suspend`,
//!   templates, scanner settings) that the new scan does not set, written
//!   under their own field manager ([`MIGRATION_MANAGER`]) so that later
//!   source applies keep them, as they keep any field a user set;
//! - its last completed run (findings, summary, when it succeeded), while the
//!   new scan has not completed one of its own: the new scan's first run
//!   counts new and resolved findings against it, and each finding keeps
//!   when it was first seen.
//!
//! When the source should have no scan (scanning disabled, out of scope, no
//! targets) the old scan is deleted without carrying anything.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use tracing::warn;

use crate::api::labels::{MANAGED_BY, MANAGED_BY_LABEL, MIGRATION_MANAGER};
use crate::api::{NucleiScan, NucleiScanSpec, NucleiScanStatus, ScanPhase, SourceKind};
use crate::error::{is_conflict, is_not_found};
use crate::scan::status::patch_status;
use crate::scanner::report::{Report, ReportLimits};

/// The name the Go operator gave the scan of the source `source`.
pub fn legacy_name(source: &str) -> String {
    format!("{source}-scan")
}

/// Whether `scan` is one the Go operator made for the source of `kind`
/// with `uid`: controlled by that source, and not labelled as ours.
pub fn is_legacy(scan: &NucleiScan, kind: SourceKind, uid: &str) -> bool {
    let ours = scan.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
    !ours
        && !uid.is_empty()
        && scan
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == kind.as_str())
}

/// The Go operator's scan of a source, if the scan cache holds one.
pub fn find(
    scans: &Store<NucleiScan>,
    kind: SourceKind,
    namespace: &str,
    source: &str,
    uid: &str,
) -> Option<Arc<NucleiScan>> {
    if kind == SourceKind::HttpRoute {
        // The Go operator never read HTTPRoutes.
        return None;
    }
    scans
        .get(&ObjectRef::new(&legacy_name(source)).within(namespace))
        .filter(|s| is_legacy(s, kind, uid))
}

/// The spec fields of `old` to carry over to `new`: every field `old` sets
/// (not empty, not false) that `new` does not, the source reference and
/// targets aside (the source's own); inside `scannerConfig` field by field.
/// `None` when there is none.
pub fn carried_spec(old: &NucleiScanSpec, new: &NucleiScanSpec) -> Option<Value> {
    let (Ok(Value::Object(old)), Ok(Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return None;
    };
    let mut carried = Map::new();
    for (key, value) in old {
        if key == "sourceRef" || key == "targets" || is_unset(&value) {
            continue;
        }
        match (value, new.get(&key)) {
            (Value::Object(inner), Some(Value::Object(theirs))) => {
                let inner: Map<String, Value> = inner
                    .into_iter()
                    .filter(|(k, v)| !is_unset(v) && theirs.get(k).is_none_or(is_unset))
                    .collect();
                if !inner.is_empty() {
                    carried.insert(key, Value::Object(inner));
                }
            }
            (value, theirs) if theirs.is_none_or(is_unset) => {
                carried.insert(key, value);
            }
            _ => {}
        }
    }
    (!carried.is_empty()).then_some(Value::Object(carried))
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// The status fields that carry `old`'s last completed run over to a scan
/// that has completed none; `None` when `old` never completed one. The
/// findings are fitted to the status budget as a run's own would be; the
/// counts of the old run's changes are not carried (they are its own).
pub fn carried_status(old: &NucleiScanStatus) -> Option<Value> {
    let mut summary = old.summary.clone()?;
    let mut report = Report::new(ReportLimits::default());
    for f in &old.findings {
        report.push(f.clone());
    }
    summary.findings_truncated |= report.truncated();
    summary.stored_findings = Some(report.stored() as i64);
    summary.new_findings = None;
    summary.unchanged_findings = None;
    summary.resolved_findings = None;
    // The Go operator did not record the last success apart from the last
    // completion.
    let succeeded = old.last_success_time.clone().or_else(|| {
        (old.phase == Some(ScanPhase::Completed))
            .then(|| old.completion_time.clone())
            .flatten()
    });
    let mut status = json!({
        "findings": report.into_findings(),
        "summary": summary,
    });
    if let Some(prints) = &old.fingerprints {
        status["fingerprints"] = json!(prints);
    }
    if let Some(t) = succeeded {
        status["lastSuccessTime"] = json!(t);
    }
    Some(status)
}

/// What [`adopt`] carried over.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Names of the spec fields carried over.
    pub spec: Vec<String>,
    /// Whether the old scan's last run was carried over.
    pub run: bool,
}

impl Adopted {
    /// "its last run and its spec fields schedule, suspend", for an Event.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.run {
            parts.push("its last run".to_string());
        }
        if !self.spec.is_empty() {
            parts.push(format!("its spec fields {}", self.spec.join(", ")));
        }
        if parts.is_empty() {
            "nothing the new scan lacked".into()
        } else {
            parts.join(" and ")
        }
    }
}

/// Carries `old` over to the scan `new` (see the module doc) and deletes
/// `old`; `None` when `old` was gone already. Safe to repeat: a carried
/// field is not carried again, and a run is carried only while `new` has
/// none of its own.
pub async fn adopt(
    api: &Api<NucleiScan>,
    old: &NucleiScan,
    new: &str,
) -> kube::Result<Option<Adopted>> {
    // The object the cache showed, not one made since under its name.
    let Some(old) = api
        .get_opt(&old.name_any())
        .await?
        .filter(|o| o.uid() == old.uid())
    else {
        return Ok(None);
    };
    // Just applied: the API server has it.
    let current = api.get(new).await?;
    let mut adopted = Adopted::default();
    if let Some(spec) = carried_spec(&old.spec, &current.spec) {
        adopted.spec = spec
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        adopted.spec.sort();
        let body = json!({
            "apiVersion": NucleiScan::api_version(&()),
            "kind": NucleiScan::kind(&()),
            "metadata": { "name": new },
            "spec": spec,
        });
        match api
            .patch(
                new,
                &PatchParams::apply(MIGRATION_MANAGER),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {}
            // Someone set the field on the new scan meanwhile: theirs stays.
            Err(e) if is_conflict(&e) => {
                warn!(
                    scan = new,
                    "spec fields of {} not carried over: {e}",
                    old.name_any()
                );
                adopted.spec.clear();
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(status) = old.status.as_ref().and_then(carried_status) {
        adopted.run = carry_run(api, new, status).await?;
    }
    retire(api, &old).await?;
    Ok(Some(adopted))
}

/// Writes the carried run `status` into the scan `new` unless it has
/// completed a run of its own; whether it did. Each write is guarded by the
/// version read: a run that completes meanwhile wins. The scan's own status
/// writes (its first run queued, started) may land in between: read again.
async fn carry_run(api: &Api<NucleiScan>, new: &str, status: Value) -> kube::Result<bool> {
    let mut attempt = 0;
    loop {
        let current = api.get(new).await?;
        let ran = current
            .status
            .as_ref()
            .is_some_and(|s| s.summary.is_some() || s.last_success_time.is_some());
        if ran {
            return Ok(false);
        }
        let rv = current.resource_version();
        match patch_status(api, new, rv.as_deref(), status.clone()).await {
            Ok(_) => return Ok(true),
            Err(e) if is_conflict(&e) && attempt < 5 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Deletes the old scan `old` (and, through it, its Jobs), if it is still
/// the object that was read.
pub async fn retire(api: &Api<NucleiScan>, old: &NucleiScan) -> kube::Result<()> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: old.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&old.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::from_value;

    fn owned_by(kind: &str, uid: &str, controller: bool) -> NucleiScan {
        let mut s = NucleiScan::new("web-scan", Default::default());
        s.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "networking.k8s.io/v1".into(),
            kind: kind.into(),
            name: "web".into(),
            uid: uid.into(),
            controller: Some(controller),
            ..Default::default()
        }]);
        s
    }

    #[test]
    fn only_a_scan_controlled_by_the_source_and_not_labelled_ours_is_legacy() {
        assert!(is_legacy(
            &owned_by("Ingress", "u1", true),
            SourceKind::Ingress,
            "u1"
        ));
        assert!(!is_legacy(
            &owned_by("Ingress", "u2", true),
            SourceKind::Ingress,
            "u1"
        ));
        assert!(!is_legacy(
            &owned_by("Ingress", "u1", false),
            SourceKind::Ingress,
            "u1"
        ));
        assert!(!is_legacy(
            &owned_by("VirtualService", "u1", true),
            SourceKind::Ingress,
            "u1"
        ));
        assert!(!is_legacy(
            &owned_by("Ingress", "", true),
            SourceKind::Ingress,
            ""
        ));
        let mut ours = owned_by("Ingress", "u1", true);
        ours.metadata.labels = Some([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())].into());
        assert!(!is_legacy(&ours, SourceKind::Ingress, "u1"));
    }

    fn spec(v: Value) -> NucleiScanSpec {
        let mut v = v;
        v["sourceRef"] = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "name": "web", "namespace": "shop", "uid": "u1"});
        v["targets"] = json!(["https://web.example.com"]);
        from_value(v).unwrap()
    }

    #[test]
    fn hand_set_fields_the_new_scan_lacks_are_carried_and_its_own_are_kept() {
        let old = spec(json!({
            "schedule": "0 3 * * *",
            "suspend": true,
            "severity": ["critical"],
            "templates": ["cves/"],
            "scannerConfig": {"timeout": "45m0s", "nodeSelector": {"pool": "scan"}},
        }));
        let new = spec(json!({
            "severity": ["high"],
            "scannerConfig": {"timeout": "30m"},
        }));
        let carried = carried_spec(&old, &new).unwrap();
        assert_eq!(
            carried,
            json!({
                "schedule": "0 3 * * *",
                "suspend": true,
                "templates": ["cves/"],
                "scannerConfig": {"nodeSelector": {"pool": "scan"}},
            })
        );
    }

    #[test]
    fn nothing_is_carried_when_the_old_scan_set_nothing_by_hand() {
        let old = spec(json!({}));
        let new = spec(json!({"schedule": "@daily"}));
        assert_eq!(carried_spec(&old, &new), None);
        let same = spec(json!({"schedule": "@daily"}));
        assert_eq!(carried_spec(&same, &new), None);
    }

    fn go_status(phase: &str, findings: usize) -> NucleiScanStatus {
        let findings: Vec<Value> = (0..findings)
            .map(|i| {
                json!({"templateId": format!("t{i}"), "severity": "high", "host": "https://web.example.com",
                    "matchedAt": format!("https://web.example.com/{i}"),
                    "timestamp": "2025-06-01T10:00:00Z",
                    "description": "x".repeat(2000)})
            })
            .collect();
        from_value(json!({
            "phase": phase,
            "completionTime": "2025-06-01T10:05:00Z",
            "lastScanTime": "2025-06-01T10:00:00Z",
            "summary": {"totalFindings": findings.len(), "findingsBySeverity": {"high": findings.len()},
                "targetsScanned": 1, "durationSeconds": 300},
            "findings": findings,
            "jobRef": {"name": "web-scan-abc", "uid": "j1"},
        }))
        .unwrap()
    }

    #[test]
    fn a_completed_go_run_is_carried_with_its_success_time_and_findings() {
        let carried = carried_status(&go_status("Completed", 2)).unwrap();
        assert_eq!(carried["lastSuccessTime"], "2025-06-01T10:05:00Z");
        assert_eq!(carried["findings"].as_array().unwrap().len(), 2);
        assert_eq!(carried["summary"]["totalFindings"], 2);
        assert_eq!(carried["summary"]["storedFindings"], 2);
        assert!(carried["summary"].get("findingsTruncated").is_none());
        // Nothing of the old run's bookkeeping: the new scan runs its own.
        for key in ["phase", "jobRef", "lastScanTime", "completionTime"] {
            assert!(carried.get(key).is_none(), "{key} carried: {carried}");
        }
        // What the new scan's first run compares with: the carried findings.
        let status: NucleiScanStatus = from_value(carried).unwrap();
        let t: Time = from_value(json!("2025-06-01T10:05:00Z")).unwrap();
        assert_eq!(status.last_success_time, Some(t));
        assert!(matches!(
            crate::scanner::history::Previous::of(Some(&status)),
            crate::scanner::history::Previous::Known(p) if p.len() == 2
        ));
    }

    #[test]
    fn a_failed_last_run_carries_its_findings_without_claiming_a_success() {
        let carried = carried_status(&go_status("Failed", 1)).unwrap();
        assert!(carried.get("lastSuccessTime").is_none(), "{carried}");
        assert_eq!(carried["findings"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_old_scan_that_never_completed_carries_no_run() {
        let mut st = go_status("Running", 0);
        st.summary = None;
        assert_eq!(carried_status(&st), None);
    }

    #[test]
    fn a_go_status_too_big_for_the_budget_is_cut_and_says_so() {
        // ~2 KiB each: 400 of them are over the 512 KiB budget.
        let carried = carried_status(&go_status("Completed", 400)).unwrap();
        let stored = carried["findings"].as_array().unwrap().len();
        assert!(stored < 400, "{stored}");
        assert_eq!(carried["summary"]["findingsTruncated"], true);
        assert_eq!(carried["summary"]["totalFindings"], 400);
        assert_eq!(carried["summary"]["storedFindings"], stored);
        let status: NucleiScanStatus = from_value(carried).unwrap();
        // A cut list without fingerprints says nothing of what is resolved.
        assert!(matches!(
            crate::scanner::history::Previous::of(Some(&status)),
            crate::scanner::history::Previous::Unknown
        ));
    }
}
