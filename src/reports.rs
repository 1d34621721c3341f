//! Findings as policy reports, where Kyverno's Policy Reporter (and the
//! tools it feeds) already look: one OpenReports `Report`
//! (`openreports.io/v1alpha1`), or a `wgpolicyk8s.io/v1alpha2`
//! `PolicyReport` where only that API exists, per NucleiScan with a
//! completed run, in the scan's namespace, named like it and owned by it
//! (the garbage collector deletes it with the scan).
//!
//! The API is found at run time, like the Istio and Gateway API sources:
//! the writer starts when the CRD appears and stops when it goes, without a
//! restart. It writes a scan's report once per completed run: each report
//! carries the run it shows ([`REPORT_RUN_ANNOTATION`]), read back at start so a
//! restart rewrites nothing. When `auto` moves to OpenReports, the
//! PolicyReports it wrote before are deleted, so no stale copy stays.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::labels::{
    FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, REPORT_RUN_ANNOTATION, REPORT_TRUNCATED_ANNOTATION,
};
use crate::api::{Finding, NucleiScan, ScanKey, Severity};
use crate::scan::status::chrono;
use crate::settings::ReportsFormat;
use crate::sources::discovery::{Served, while_served};

/// The OpenReports CRD.
pub const OPENREPORTS_CRD: &str = "reports.openreports.io";
/// The Policy WG's PolicyReport CRD.
pub const WGPOLICY_CRD: &str = "policyreports.wgpolicyk8s.io";
/// `source` of the report and of each result.
pub const SOURCE: &str = "nuclei";

/// How often the cached scans are compared with the reports written.
const SWEEP: Duration = Duration::from_secs(2);
/// Wait before a failed write of the same run is tried again.
const RETRY: Duration = Duration::from_secs(60);

/// The report API written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `openreports.io/v1alpha1` `Report`.
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport`.
    WgPolicy,
}

impl Format {
    fn api_resource(self) -> ApiResource {
        let (gvk, plural) = match self {
            Format::OpenReports => (
                GroupVersionKind::gvk("openreports.io", "v1alpha1", "Report"),
                "reports",
            ),
            Format::WgPolicy => (
                GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
                "policyreports",
            ),
        };
        ApiResource::from_gvk_with_plural(&gvk, plural)
    }
}

/// Which report APIs the cluster serves at the versions written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Available {
    openreports: bool,
    wgpolicy: bool,
}

fn available(served: &Served) -> Option<Available> {
    let has = |crd: &str, version: &str| {
        served
            .get(crd)
            .is_some_and(|v| v.iter().any(|v| v == version))
    };
    let a = Available {
        openreports: has(OPENREPORTS_CRD, "v1alpha1"),
        wgpolicy: has(WGPOLICY_CRD, "v1alpha2"),
    };
    (a.openreports || a.wgpolicy).then_some(a)
}

/// The API `setting` asks for among those `available`: `auto` prefers
/// OpenReports, the successor of the Policy WG's API.
pub fn choose(setting: ReportsFormat, available: Available) -> Option<Format> {
    match setting {
        ReportsFormat::None => None,
        ReportsFormat::Openreports => available.openreports.then_some(Format::OpenReports),
        ReportsFormat::Wgpolicy => available.wgpolicy.then_some(Format::WgPolicy),
        ReportsFormat::Auto if available.openreports => Some(Format::OpenReports),
        ReportsFormat::Auto => available.wgpolicy.then_some(Format::WgPolicy),
    }
}

/// What the report writer reads.
pub struct ReportCtx {
    pub client: kube::Client,
    /// The scan controller's cache (scans without `status.findings`).
    pub scans: Store<NucleiScan>,
    pub setting: ReportsFormat,
    /// Most bytes the serialized results may take.
    pub budget_bytes: usize,
    /// Finding exceptions: a run is reported once they were checked.
    pub exceptions: Arc<crate::suppress::controller::Exceptions>,
}

/// Longest a run's report waits for its findings to be checked against
/// the namespace's exceptions.
const MARKS_WAIT: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Writes reports while a report API the setting allows is served.
pub async fn run(ctx: Arc<ReportCtx>, shutdown: CancellationToken) {
    if ctx.setting == ReportsFormat::None {
        // A task of the controller's: ending early would stop the others.
        shutdown.cancelled().await;
        return;
    }
    let client = ctx.client.clone();
    let setting = ctx.setting;
    // Only the API written counts: the other one coming or going changes
    // nothing.
    let pick = move |served: &Served| available(served).and_then(|a| choose(setting, a));
    let start = move |format: Format, stop: CancellationToken| {
        tokio::spawn(write_reports(ctx.clone(), format, stop));
    };
    // A deleted CRD takes its reports with it: nothing to clean up.
    let removed = |_| {};
    while_served(
        client,
        &[OPENREPORTS_CRD, WGPOLICY_CRD],
        "policy report API",
        pick,
        start,
        removed,
        shutdown,
    )
    .await;
}

/// The run a scan's report shows: its uid and when its last successful run
/// finished; `None` before a scan has completed once.
pub fn run_marker(scan: &NucleiScan) -> Option<String> {
    let status = scan.status.as_ref()?;
    let summary = status.summary.as_ref()?;
    let at = status.last_success()?;
    let run = format!(
        "{}/{}",
        scan.uid().unwrap_or_default(),
        chrono(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    // Exceptions accept findings of a run after it was written: the report
    // follows them (see `crate::suppress`).
    if !status.suppression_current() {
        return Some(run);
    }
    let accepted: Vec<String> = Severity::ALL
        .iter()
        .map(|s| {
            let n = summary.suppressed_by_severity.get(s.as_str());
            n.copied().unwrap_or(0).to_string()
        })
        .collect();
    Some(format!("{run}/accepted={}", accepted.join(",")))
}

/// Whether `scan`'s last run, which finished less than [`MARKS_WAIT`] ago,
/// is still to be checked against its namespace's exceptions (reported
/// now, accepted findings would show as failed until the next write).
fn awaits_marks(ctx: &ReportCtx, scan: &NucleiScan) -> bool {
    let Some(status) = scan.status.as_ref() else {
        return false;
    };
    let recent = status
        .last_success()
        .is_some_and(|at| Utc::now() - chrono(at) < MARKS_WAIT);
    recent
        && !status.suppression_current()
        && ctx.exceptions.any_in(&scan.namespace().unwrap_or_default())
}

async fn write_reports(ctx: Arc<ReportCtx>, format: Format, stop: CancellationToken) {
    let ar = format.api_resource();
    info!(kind = ar.kind, "writing findings as policy reports");
    let all: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ar);
    // Runs already shown, by scan key; and failed writes not to retry yet.
    let mut written: HashMap<String, String> = HashMap::new();
    let mut failed: HashMap<String, (String, tokio::time::Instant)> = HashMap::new();
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    match all.list_metadata(&lp).await {
        Ok(list) => {
            for r in list.items {
                if let Some(run) = r.annotations().get(REPORT_RUN_ANNOTATION) {
                    let key = ScanKey::of(&r).to_string();
                    written.insert(key, run.clone());
                }
            }
        }
        Err(e) => warn!(
            kind = ar.kind,
            "listing existing reports: {e}; rewriting them"
        ),
    }
    // `auto` moved on from PolicyReports (an explicit setting never
    // touches the other API).
    if ctx.setting == ReportsFormat::Auto && format == Format::OpenReports {
        delete_reports(&ctx.client, Format::WgPolicy).await;
    }
    let ready = ctx.scans.wait_until_ready();
    tokio::select! {
        _ = ready => {}
        _ = stop.cancelled() => return,
    }
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for scan in ctx.scans.state() {
            let Some(run) = run_marker(&scan) else {
                continue;
            };
            let key = format!(
                "{}/{}",
                scan.namespace().unwrap_or_default(),
                scan.name_any()
            );
            if written.get(&key) == Some(&run) {
                continue;
            }
            if awaits_marks(&ctx, &scan) {
                continue;
            }
            if failed
                .get(&key)
                .is_some_and(|(r, until)| *r == run && tokio::time::Instant::now() < *until)
            {
                continue;
            }
            match write_one(&ctx, &ar, format, &scan).await {
                // The cached run counts as written, also when the scan read
                // showed a newer one (the cache then catches up and it is
                // written again) or none (it went, or a legacy Completed
                // scan started its next run): never retried each sweep.
                Ok(()) => {
                    failed.remove(&key);
                    written.insert(key, run);
                }
                Err(e) => {
                    warn!(scan = key, kind = ar.kind, "writing the report: {e}");
                    failed.insert(key, (run, tokio::time::Instant::now() + RETRY));
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
        let cached = |k: &String| {
            k.parse::<ScanKey>()
                .is_ok_and(|k| ctx.scans.get(&k.object_ref()).is_some())
        };
        written.retain(|k, _| cached(k));
        failed.retain(|k, _| cached(k));
    }
}

/// Reads the scan whole (the cache has no findings) and applies its
/// report; nothing when the scan is gone, is another scan of the same name,
/// or has no completed run.
async fn write_one(
    ctx: &ReportCtx,
    ar: &ApiResource,
    format: Format,
    cached: &NucleiScan,
) -> kube::Result<()> {
    let ns = cached.namespace().unwrap_or_default();
    let scans: Api<NucleiScan> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(scan) = scans.get_opt(&cached.name_any()).await? else {
        return Ok(());
    };
    if scan.uid() != cached.uid() {
        return Ok(());
    }
    let Some(report) = build(format, &scan, ctx.budget_bytes) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, ar);
    api.patch(
        &scan.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&report),
    )
    .await?;
    Ok(())
}

/// Deletes the reports this operator wrote in the API `format` (written
/// before a switch; stale from now on). Best effort: that API may not be
/// served, or not be the operator's to touch (RBAC), and a report left
/// behind still goes with its scan.
async fn delete_reports(client: &kube::Client, format: Format) {
    let ar = format.api_resource();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let list = match all.list_metadata(&lp).await {
        Ok(list) => list,
        Err(e) => {
            debug!(
                kind = ar.kind,
                "not cleaning up the reports of the API moved on from: {e}"
            );
            return;
        }
    };
    for r in list.items {
        let ns = r.namespace().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        match api.delete(&r.name_any(), &Default::default()).await {
            Ok(_) => {
                info!(kind = ar.kind, report = %format!("{ns}/{}", r.name_any()), "deleted: reports are written to another API now")
            }
            Err(e) => debug!(kind = ar.kind, "deleting an old report: {e}"),
        }
    }
}

/// The report of `scan`'s last completed run (`None` before it has one):
/// one result per stored finding, most severe first, cut to `budget_bytes`
/// of serialized results; the summary counts every finding.
pub fn build(format: Format, scan: &NucleiScan, budget_bytes: usize) -> Option<Value> {
    let run = run_marker(scan)?;
    let status = scan.status.as_ref()?;
    let summary = status.summary.as_ref()?;
    let finished = status.last_success().map(chrono).unwrap_or_default();
    // Findings an exception accepts are `skip`, not `fail` or `warn`.
    let (mut fail, mut warn, mut skip) = (0i64, 0i64, 0i64);
    let none = BTreeMap::new();
    let accepted = if status.suppression_current() {
        &summary.suppressed_by_severity
    } else {
        &none
    };
    for (key, n) in &summary.findings_by_severity {
        let severity = key.parse().unwrap_or(Severity::Unknown);
        let skipped = accepted
            .get(key)
            .copied()
            .unwrap_or(0)
            .clamp(0, (*n).max(0));
        skip += skipped;
        if result_of(severity) == "fail" {
            fail += (*n).max(0) - skipped;
        } else {
            warn += (*n).max(0) - skipped;
        }
    }
    let mut results = Vec::new();
    let mut size = 2; // `[]`
    for finding in &status.findings {
        let r = result(finding, finished);
        let len = serde_json::to_vec(&r).map_or(usize::MAX, |v| v.len()) + 1;
        if size + len > budget_bytes {
            break;
        }
        size += len;
        results.push(r);
    }
    let truncated = (results.len() as i64) < summary.total_findings;
    let ar = format.api_resource();
    let source = &scan.spec.source_ref;
    let mut annotations = BTreeMap::from([(REPORT_RUN_ANNOTATION, run)]);
    if truncated {
        annotations.insert(REPORT_TRUNCATED_ANNOTATION, "true".into());
    }
    let mut report = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {
            "name": scan.name_any(),
            "namespace": scan.namespace(),
            "labels": { MANAGED_BY_LABEL: MANAGED_BY },
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": <NucleiScan as kube::Resource>::api_version(&()),
                "kind": "NucleiScan",
                "name": scan.name_any(),
                "uid": scan.uid(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        // The object users look at: the Ingress, VirtualService or HTTPRoute.
        "scope": {
            "apiVersion": source.api_version,
            "kind": source.kind,
            "name": source.name,
            "namespace": source.namespace,
            "uid": source.uid,
        },
        "summary": { "pass": 0, "fail": fail, "warn": warn, "error": 0, "skip": skip },
        "results": results,
    });
    if format == Format::OpenReports {
        report["source"] = json!(SOURCE);
    }
    Some(report)
}

/// `fail` for critical and high findings, `warn` below.
fn result_of(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "fail",
        _ => "warn",
    }
}

/// One report result. Both report APIs know the same five severities: a
/// finding of unknown severity is reported as `info`.
fn result(f: &Finding, finished: DateTime<Utc>) -> Value {
    let severity = f.severity.unwrap_or(Severity::Unknown);
    let at = f.timestamp.as_ref().map_or(finished, chrono);
    let name = if f.template_name.is_empty() {
        &f.template_id
    } else {
        &f.template_name
    };
    let place = if f.matched_at.is_empty() {
        &f.host
    } else {
        &f.matched_at
    };
    let mut properties = BTreeMap::from([
        ("resultID", result_id(f)),
        ("host", f.host.clone()),
        ("matchedAt", f.matched_at.clone()),
        ("suppressedBy", f.suppressed_by.clone()),
    ]);
    if !f.cve_ids.is_empty() {
        properties.insert("cve", f.cve_ids.join(","));
    }
    if let Some(score) = f.cvss_score {
        properties.insert("cvssScore", score.to_string());
    }
    if let Some(url) = f.reference.first() {
        properties.insert("reference", url.clone());
    }
    properties.retain(|_, v| !v.is_empty());
    let mut r = json!({
        "source": SOURCE,
        "policy": f.template_id,
        "rule": if f.matcher_name.is_empty() { &f.template_id } else { &f.matcher_name },
        "severity": match severity {
            Severity::Unknown => "info",
            s => s.as_str(),
        },
        "result": if f.suppressed_by.is_empty() { result_of(severity) } else { "skip" },
        "scored": true,
        "timestamp": { "seconds": at.timestamp(), "nanos": 0 },
        "message": format!("{name} at {place}"),
        "properties": properties,
    });
    if !f.kind.is_empty() {
        r["category"] = json!(f.kind);
    }
    r
}

/// A stable id of a finding (template, matcher, host, place), the same in
/// every run that finds it, so tools that alert on new results do not
/// repeat themselves.
fn result_id(f: &Finding) -> String {
    let key = [&f.template_id, &f.matcher_name, &f.host, &f.matched_at]
        .map(|s| s.as_str())
        .join("\u{1f}");
    crate::hash::fnv1a_64_hex(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        NucleiScanSpec, NucleiScanStatus, ScanPhase, ScanSummary, SourceKind, SourceRef,
    };
    use crate::scan::status::time;

    fn finding(id: &str, severity: Severity, at: &str) -> Finding {
        Finding {
            template_id: id.into(),
            template_name: format!("{id} name"),
            severity: Some(severity),
            kind: "http".into(),
            host: "shop.example.com".into(),
            matched_at: at.into(),
            ..Default::default()
        }
    }

    fn scan(findings: Vec<Finding>, counts: &[(&str, i64)]) -> NucleiScan {
        let mut s = NucleiScan::new(
            "shop-ingress",
            NucleiScanSpec {
                source_ref: SourceRef {
                    api_version: "networking.k8s.io/v1".into(),
                    kind: SourceKind::Ingress,
                    name: "shop".into(),
                    namespace: "web".into(),
                    uid: "ingress-uid".into(),
                },
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("web".into());
        s.metadata.uid = Some("scan-uid".into());
        s.status = Some(NucleiScanStatus {
            phase: Some(ScanPhase::Completed),
            findings,
            summary: Some(ScanSummary {
                total_findings: counts.iter().map(|(_, n)| n).sum(),
                findings_by_severity: counts.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                ..Default::default()
            }),
            last_success_time: Some(time(DateTime::from_timestamp(1_700_000_000, 0).unwrap())),
            ..Default::default()
        });
        s
    }

    #[test]
    fn a_completed_scan_becomes_an_openreports_report_owned_by_it_scoped_to_its_source() {
        let s = scan(
            vec![
                Finding {
                    matcher_name: "canary-page".into(),
                    cve_ids: vec!["CVE-2099-0001".into()],
                    cvss_score: Some(9.8),
                    ..finding("canary", Severity::High, "http://shop.example.com/canary")
                },
                finding("banner", Severity::Info, ""),
                finding("odd", Severity::Unknown, "http://shop.example.com/x"),
            ],
            &[("high", 1), ("info", 1), ("unknown", 1)],
        );
        let r = build(Format::OpenReports, &s, 1 << 20).unwrap();
        assert_eq!(r["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(r["kind"], "Report");
        assert_eq!(r["source"], "nuclei");
        assert_eq!(r["metadata"]["name"], "shop-ingress");
        assert_eq!(r["metadata"]["namespace"], "web");
        assert_eq!(r["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            r["metadata"]["annotations"][REPORT_RUN_ANNOTATION],
            "scan-uid/2023-11-14T22:13:20.000Z"
        );
        assert!(r["metadata"]["annotations"][REPORT_TRUNCATED_ANNOTATION].is_null());
        let owner = &r["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "NucleiScan");
        assert_eq!(owner["uid"], "scan-uid");
        assert_eq!(owner["controller"], true);
        assert_eq!(
            r["scope"],
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "shop",
                   "namespace": "web", "uid": "ingress-uid"})
        );
        assert_eq!(
            r["summary"],
            json!({"pass": 0, "fail": 1, "warn": 2, "error": 0, "skip": 0})
        );
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[0],
            json!({
                "source": "nuclei", "policy": "canary", "rule": "canary-page",
                "category": "http", "severity": "high", "result": "fail", "scored": true,
                "timestamp": {"seconds": 1_700_000_000, "nanos": 0},
                "message": "canary name at http://shop.example.com/canary",
                "properties": {
                    "resultID": result_id(&s.status.as_ref().unwrap().findings[0]),
                    "host": "shop.example.com", "matchedAt": "http://shop.example.com/canary",
                    "cve": "CVE-2099-0001", "cvssScore": "9.8",
                },
            })
        );
        // No matcher: the rule is the template; no place: the host.
        assert_eq!(results[1]["rule"], "banner");
        assert_eq!(results[1]["message"], "banner name at shop.example.com");
        assert_eq!(results[1]["result"], "warn");
        // Both APIs know five severities.
        assert_eq!(results[2]["severity"], "info");
    }

    #[test]
    fn a_policyreport_has_the_same_results_and_no_report_level_source() {
        let s = scan(
            vec![finding("a", Severity::Critical, "u")],
            &[("critical", 1)],
        );
        let open = build(Format::OpenReports, &s, 1 << 20).unwrap();
        let wg = build(Format::WgPolicy, &s, 1 << 20).unwrap();
        assert_eq!(wg["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(wg["kind"], "PolicyReport");
        assert!(wg.get("source").is_none());
        assert_eq!(wg["results"], open["results"]);
        assert_eq!(wg["summary"], open["summary"]);
    }

    #[test]
    fn results_stay_in_the_byte_budget_and_the_summary_counts_everything() {
        let findings: Vec<Finding> = (0..500)
            .map(|i| {
                finding(
                    &format!("t{i:03}"),
                    Severity::Medium,
                    &format!("http://h/{i}"),
                )
            })
            .collect();
        // The scan stored 500 of 800 medium findings.
        let s = scan(findings, &[("medium", 800), ("critical", 2)]);
        let budget = 16 * 1024;
        let r = build(Format::OpenReports, &s, budget).unwrap();
        let results = r["results"].as_array().unwrap();
        assert!(!results.is_empty());
        assert!(serde_json::to_vec(results).unwrap().len() <= budget);
        assert!(results.len() < 500);
        assert_eq!(r["summary"]["fail"], 2);
        assert_eq!(r["summary"]["warn"], 800);
        assert_eq!(
            r["metadata"]["annotations"][REPORT_TRUNCATED_ANNOTATION],
            "true"
        );
    }

    #[test]
    fn accepted_findings_are_skipped_not_failed() {
        let mut accepted = finding("git-config", Severity::High, "http://h/.git/config");
        accepted.suppressed_by = "docs-mirror".into();
        let other = finding("admin", Severity::High, "http://h/admin");
        let mut s = scan(vec![accepted, other], &[("high", 2), ("info", 1)]);
        let unmarked = run_marker(&s).unwrap();
        let status = s.status.as_mut().unwrap();
        let run = status.last_success().cloned();
        let summary = status.summary.as_mut().unwrap();
        summary.suppressed_by_severity = [("high".to_owned(), 1), ("info".to_owned(), 0)].into();
        summary.suppressed_findings = Some(1);
        summary.suppressed_run = run;
        // Marking rewrites the report, and so does any other acceptance.
        let marked = run_marker(&s).unwrap();
        assert_eq!(marked, format!("{unmarked}/accepted=0,1,0,0,0,0"));
        let r = build(Format::OpenReports, &s, 1 << 20).unwrap();
        assert_eq!(
            r["summary"],
            json!({"pass": 0, "fail": 1, "warn": 1, "error": 0, "skip": 1})
        );
        let results = r["results"].as_array().unwrap();
        assert_eq!(results[0]["result"], "skip");
        assert_eq!(results[0]["properties"]["suppressedBy"], "docs-mirror");
        assert_eq!(results[1]["result"], "fail");
        assert!(results[1]["properties"].get("suppressedBy").is_none());
    }

    #[test]
    fn the_result_id_names_the_finding_not_the_run() {
        let a = finding("t", Severity::High, "http://h/a");
        let later = Finding {
            timestamp: Some(time(Utc::now())),
            extracted_results: vec!["changed".into()],
            ..a.clone()
        };
        assert_eq!(result_id(&a), result_id(&later));
        let elsewhere = finding("t", Severity::High, "http://h/b");
        assert_ne!(result_id(&a), result_id(&elsewhere));
    }

    #[test]
    fn a_scan_without_a_completed_run_has_no_report() {
        let mut s = scan(vec![], &[]);
        s.status = Some(NucleiScanStatus {
            phase: Some(ScanPhase::Failed),
            completion_time: Some(time(Utc::now())),
            ..Default::default()
        });
        assert_eq!(build(Format::OpenReports, &s, 1 << 20), None);
        s.status = None;
        assert_eq!(run_marker(&s), None);
    }

    #[test]
    fn the_setting_picks_among_the_served_apis() {
        let both = Available {
            openreports: true,
            wgpolicy: true,
        };
        let wg_only = Available {
            openreports: false,
            wgpolicy: true,
        };
        let open_only = Available {
            openreports: true,
            wgpolicy: false,
        };
        use ReportsFormat::*;
        assert_eq!(choose(Auto, both), Some(Format::OpenReports));
        assert_eq!(choose(Auto, wg_only), Some(Format::WgPolicy));
        assert_eq!(choose(Openreports, wg_only), Option::None);
        assert_eq!(choose(Wgpolicy, both), Some(Format::WgPolicy));
        assert_eq!(choose(Wgpolicy, open_only), Option::None);
        assert_eq!(choose(None, both), Option::None);
        let served = |crd: &'static str, v: &str| Served::from([(crd, vec![v.to_string()])]);
        assert_eq!(
            available(&served(OPENREPORTS_CRD, "v1alpha1")),
            Some(open_only)
        );
        assert_eq!(available(&served(WGPOLICY_CRD, "v1alpha2")), Some(wg_only));
        // Another version than the one written: not available.
        assert_eq!(available(&served(WGPOLICY_CRD, "v1beta1")), Option::None);
    }
}
