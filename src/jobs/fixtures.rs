//! Test fixtures shared by the Job modules.

use std::collections::BTreeMap;

use super::*;
use crate::api::NucleiScan;
use crate::api::{NucleiScanSpec, NucleiScanStatus, ScannerConfig};
use crate::settings::Settings;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

// ---- fixtures ----------------------------------------------------------

/// Git sources from `templateURLs` entries.
pub(crate) fn sources(entries: &[&str]) -> Vec<crate::git::GitSource> {
    entries
        .iter()
        .map(|e| crate::git::GitSource::parse(e).unwrap())
        .collect()
}

pub(crate) fn scan() -> NucleiScan {
    let mut s = NucleiScan::new(
        "shop-ingress",
        NucleiScanSpec {
            targets: vec!["https://shop.example.com".into()],
            ..NucleiScanSpec::default()
        },
    );
    s.metadata.namespace = Some("web".into());
    s.metadata.uid = Some("6f1c2a0e-8d1b-4c55-9a57-2b6a7e3d9f10".into());
    s.metadata.generation = Some(3);
    s
}

pub(crate) fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

pub(crate) fn with_status(mut s: NucleiScan, f: impl FnOnce(&mut NucleiScanStatus)) -> NucleiScan {
    f(s.status.get_or_insert_with(NucleiScanStatus::default));
    s
}

pub(crate) fn with_config(mut s: NucleiScan, config: ScannerConfig) -> NucleiScan {
    s.spec.scanner_config = Some(config);
    s
}

pub(crate) fn params() -> JobParams {
    effective_params(&scan(), &Settings::default()).unwrap()
}

pub(crate) fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

pub(crate) fn scanner(job: &Job) -> &Container {
    let p = pod(job);
    assert_eq!(p.containers.len(), 1);
    &p.containers[0]
}

pub(crate) fn env(c: &Container) -> BTreeMap<&str, &EnvVar> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e))
        .collect()
}

pub(crate) fn env_val<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

pub(crate) fn mounts(c: &Container) -> Vec<(&str, &str, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.as_str(),
                m.mount_path.as_str(),
                m.read_only == Some(true),
            )
        })
        .collect()
}

pub(crate) use crate::names::{is_dns_label, is_label_value};
