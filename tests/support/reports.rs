//! The report CRDs (the projects' own, from the devcluster tools cache) and
//! the reports the operator writes, and reading /metrics samples.

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;

use super::eventually;

/// OpenReports `Report`s in `ns`.
pub fn open_reports(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("openreports.io", "v1alpha1", "Report");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "reports");
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The Policy WG's `PolicyReport`s in `ns`.
pub fn policy_reports(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "policyreports");
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Waits (60 s at most) until the report `name` exists and `f` holds for
/// it; returns it as JSON.
pub async fn report(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    eventually(Duration::from_secs(60), what, || async {
        let r = api.get_opt(name).await.ok()??;
        let v = serde_json::to_value(r).ok()?;
        f(&v).then_some(v)
    })
    .await
}

/// The value of the sample of `series` (name and labels, as printed) in a
/// /metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// `nuclei_findings` of one scan and severity.
pub fn findings_series(ns: &str, scan: &str, severity: &str) -> String {
    format!("nuclei_findings{{namespace=\"{ns}\",nucleiscan=\"{scan}\",severity=\"{severity}\"}}")
}
