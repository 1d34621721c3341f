//! Bringing the installed CRDs to the ones this binary defines
//! (`nuclei-operator crd --apply`). Helm installs `crds/` once and never
//! upgrades it, nor installs a CRD added to it later; the chart runs this as
//! a pre-upgrade hook Job so that a `helm upgrade` brings the schemas the new
//! operator writes and the kinds it watches. It never replaces a CRD of a
//! newer operator version with an older one.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::api::crds;
use crate::api::labels::{CRD_UPGRADE_MANAGER, CRD_VERSION_LABEL};

/// What [`apply`] did to one CRD.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// It was not installed and now is.
    Created,
    /// The CRD is now this binary's (it may have been already).
    Updated { from: Option<String> },
    /// The installed CRD comes from a newer operator version: left alone.
    KeptNewer { installed: String },
}

/// Applies every CRD of [`crds`] (server-side, taking over the fields Helm
/// or anyone else set; creating the missing ones) and waits until the API
/// server serves each. Returns each CRD's name and what was done.
pub async fn apply(client: kube::Client, wait: Duration) -> Result<Vec<(String, Applied)>> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut done = Vec::new();
    for (_, want) in crds() {
        let name = want.name_any();
        let applied = apply_one(&api, &want, wait).await?;
        done.push((name, applied));
    }
    Ok(done)
}

async fn apply_one(
    api: &Api<CustomResourceDefinition>,
    want: &CustomResourceDefinition,
    wait: Duration,
) -> Result<Applied> {
    let name = want.name_any();
    let installed = api
        .get_opt(&name)
        .await
        .with_context(|| format!("reading CustomResourceDefinition {name}"))?;
    let from = installed
        .as_ref()
        .and_then(|c| c.labels().get(CRD_VERSION_LABEL).cloned());
    if let Some(installed) = from
        .as_deref()
        .filter(|v| is_newer(v, env!("CARGO_PKG_VERSION")))
    {
        return Ok(Applied::KeptNewer {
            installed: installed.to_owned(),
        });
    }
    api.patch(
        &name,
        &PatchParams::apply(CRD_UPGRADE_MANAGER).force(),
        &Patch::Apply(want),
    )
    .await
    .with_context(|| format!("applying CustomResourceDefinition {name}"))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = api.get(&name).await?;
        if established(&now) {
            return Ok(match installed {
                None => Applied::Created,
                Some(_) => Applied::Updated { from },
            });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "CustomResourceDefinition {name} was applied but is not Established after {wait:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the API server serves the CRD's names.
fn established(crd: &CustomResourceDefinition) -> bool {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    })
}

/// Whether version `a` is newer than `b`, comparing their dotted numbers
/// (`0.10.0` > `0.9.1`; a pre-release suffix is ignored). A version that is
/// not dotted numbers is never newer, so an unknown label does not block the
/// upgrade.
fn is_newer(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u64>> {
        let v = v.trim_start_matches('v');
        let core = v.split(['-', '+']).next()?;
        core.split('.').map(|p| p.parse().ok()).collect()
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_their_numbers() {
        assert!(is_newer("0.10.0", "0.9.1"));
        assert!(is_newer("1.0.0", "0.99.99"));
        assert!(is_newer("v0.6.0", "0.5.0"));
        assert!(is_newer("0.5.1-rc.1", "0.5.0"));
        assert!(!is_newer("0.5.0", "0.5.0"));
        assert!(!is_newer("0.4.0", "0.5.0"));
        assert!(!is_newer("latest", "0.5.0"));
        assert!(!is_newer("", "0.5.0"));
    }

    #[test]
    fn every_crd_names_this_version() {
        for (_, crd) in crds() {
            assert_eq!(
                crd.labels().get(CRD_VERSION_LABEL).map(String::as_str),
                Some(env!("CARGO_PKG_VERSION"))
            );
        }
    }

    #[test]
    fn a_crd_is_established_only_when_its_condition_says_so() {
        let with = |status: &str| -> CustomResourceDefinition {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x"},
                "spec": {"group": "g", "names": {"kind": "K", "plural": "ks"}, "scope": "Namespaced", "versions": []},
                "status": {"conditions": [
                    {"type": "NamesAccepted", "status": "True"},
                    {"type": "Established", "status": status}
                ]}
            }))
            .unwrap()
        };
        assert!(established(&with("True")));
        assert!(!established(&with("False")));
        let mut none = with("True");
        none.status = None;
        assert!(!established(&none));
    }
}
