//! The `nuclei.homelab.mortenolsen.pro/v1alpha1` API, and the minimal Istio
//! `VirtualService` and Gateway API `HTTPRoute`/`Gateway` types we read.

mod finding;
pub mod gateway;
pub mod nucleiscan;
pub mod virtual_service;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use finding::{Finding, Severity};
pub use nucleiscan::{
    JobRef, MAX_RATE_LIMIT, MAX_REFUSED_LISTED, MAX_RETRY_COUNT, MAX_TARGET_LEN, MAX_TARGETS,
    MIN_RATE_LIMIT, NucleiScan, NucleiScanSpec, NucleiScanStatus, ScanPhase, ScanSummary,
    ScannerConfig, SourceKind, SourceRef, TEMPLATE_PATH_RULE, TEMPLATE_PATH_RULE_MESSAGE,
    is_template_path, is_valid_target,
};
pub use virtual_service::{
    HttpMatchRequest, HttpRoute, OpaqueRoute, StringMatch, VirtualService, VirtualServiceSpec,
};

/// Where the generated `NucleiScan` CRD is checked in, relative to the
/// repository root.
pub const CRD_PATH: &str = "deploy/crds/nucleiscans.nuclei.homelab.mortenolsen.pro.yaml";

/// Label of the CRD naming the operator version that defined it: the chart's
/// pre-upgrade hook reads it so that it never replaces a newer CRD with an
/// older one (see [`crate::crd`]).
pub const CRD_VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The `NucleiScan` CustomResourceDefinition, generated from the Rust types,
/// labelled with this operator's version.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = NucleiScan::crd();
    crd.metadata.labels = Some(
        [
            ("app.kubernetes.io/name", "nuclei-operator"),
            (CRD_VERSION_LABEL, env!("CARGO_PKG_VERSION")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    crd
}

/// [`crd`] as YAML, exactly as checked in at [`CRD_PATH`]
/// (`nuclei-operator crd` prints it).
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&crd()).expect("a CRD always serializes to YAML");
    format!("# Generated from src/api/nucleiscan.rs by `cargo run -- crd`; do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_crd_matches_the_rust_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CRD_PATH);
        let want = crd_yaml();
        if std::env::var_os("NUCLEI_UPDATE_CRD").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{CRD_PATH} is stale or missing: run `cargo run -- crd > {CRD_PATH}` \
             (or `NUCLEI_UPDATE_CRD=1 cargo test -p nuclei-operator --lib crd`) and commit it"
        );
    }

    #[test]
    fn the_crd_yaml_parses_back_to_the_crd() {
        let back: CustomResourceDefinition = serde_yaml::from_str(&crd_yaml()).unwrap();
        assert_eq!(back, crd());
        assert_eq!(
            back.metadata.name.as_deref(),
            Some("nucleiscans.nuclei.homelab.mortenolsen.pro")
        );
    }
}
