//! Sources whose APIs may come and go: Istio's VirtualService and the
//! Gateway API are CRDs that may be absent, installed while the operator
//! runs, removed, or serve only some versions. Their source controllers run
//! while the CRDs serve a version we read, and stop (without a restart, and
//! without failing the operator) when they no longer do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The versions each watched CRD serves, by CRD name; a CRD that is absent
/// or not yet `Established` has no entry.
pub type Served = BTreeMap<&'static str, Vec<String>>;

/// The versions `crd` serves, once the API server has established it.
pub fn served_versions(crd: &CustomResourceDefinition) -> Vec<String> {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established {
        return Vec::new();
    }
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.clone())
        .collect()
}

/// Watches the CRDs named in `crds` and keeps one source controller running
/// while `pick` finds what it needs in the served versions: `start(choice,
/// stop)` starts it, and `stop` is cancelled when `pick` changes its
/// answer (say, `v1` stopped being served) or finds nothing. `removed(crd)`
/// is called when a CRD that existed is deleted: its objects are gone, and
/// the garbage collector cannot resolve owner references to a kind that no
/// longer exists, so the scans they owned are the caller's to delete.
pub async fn while_served<C>(
    client: kube::Client,
    crds: &'static [&'static str],
    what: &'static str,
    pick: impl Fn(&Served) -> Option<C>,
    start: impl Fn(C, CancellationToken),
    removed: impl Fn(&'static str),
    shutdown: CancellationToken,
) where
    C: Clone + PartialEq + Debug,
{
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let streams = crds.iter().map(|name| {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(api.clone(), cfg)
            .default_backoff()
            .map(move |e| (*name, e))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut state = CrdState::default();
    let mut running: Option<(C, CancellationToken)> = None;
    loop {
        let (name, event) = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.next() => match e { Some(e) => e, None => break },
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!("watching the {what} CRD {name}: {e}");
                continue;
            }
        };
        let step = state.apply(name, event);
        if step.removed {
            removed(name);
        }
        if !step.settled {
            continue;
        }
        let want = pick(&state.served);
        if running.as_ref().map(|(c, _)| c) == want.as_ref() {
            continue;
        }
        if let Some((c, stop)) = running.take() {
            info!(version = ?c, "{what} gone or changed: stopping its source");
            stop.cancel();
        }
        if let Some(c) = want {
            info!(version = ?c, "{what} found: starting its source");
            let stop = shutdown.child_token();
            start(c.clone(), stop.clone());
            running = Some((c, stop));
        }
    }
}

/// The watched CRDs as their watch events tell them.
#[derive(Debug, Default)]
struct CrdState {
    served: Served,
    /// CRDs that exist, served or not.
    present: BTreeSet<&'static str>,
    /// CRDs being relisted, and whether each existed before the relist.
    relisting: BTreeMap<&'static str, bool>,
}

/// What one watch event changed.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    /// The CRD existed and is gone.
    removed: bool,
    /// No CRD is half relisted: `served` may be judged.
    settled: bool,
}

impl CrdState {
    fn apply(
        &mut self,
        name: &'static str,
        event: watcher::Event<CustomResourceDefinition>,
    ) -> Step {
        let mut removed = false;
        match event {
            watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                self.present.insert(name);
                let versions = served_versions(&c);
                if versions.is_empty() {
                    self.served.remove(name);
                } else {
                    self.served.insert(name, versions);
                }
            }
            watcher::Event::Delete(_) => {
                self.served.remove(name);
                removed = self.present.remove(name);
            }
            // A relist: the CRD is absent unless it is listed again before
            // `InitDone`. A list that fails starts over with another
            // `Init`: keep what was known before the first.
            watcher::Event::Init => {
                self.served.remove(name);
                let existed = self.present.remove(name);
                *self.relisting.entry(name).or_insert(false) |= existed;
            }
            watcher::Event::InitDone => {
                removed = self.relisting.remove(name) == Some(true) && !self.present.contains(name);
            }
        }
        Step {
            removed,
            // Judged once every relist is whole, rather than a source
            // stopped for a moment.
            settled: self.relisting.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_established_crds_serve_and_only_their_served_versions() {
        let crd = |established: &str| -> CustomResourceDefinition {
            serde_json::from_value(json!({
                "metadata": {"name": "httproutes.gateway.networking.k8s.io"},
                "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                         "names": {"plural": "httproutes", "kind": "HTTPRoute"},
                         "versions": [{"name": "v1", "served": false, "storage": true},
                                      {"name": "v1beta1", "served": true, "storage": false}]},
                "status": {"conditions": [{"type": "Established", "status": established}]}
            }))
            .unwrap()
        };
        assert_eq!(served_versions(&crd("True")), ["v1beta1"]);
        assert!(served_versions(&crd("False")).is_empty());
    }

    fn established(name: &str) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"group": "g", "scope": "Namespaced", "names": {"plural": "p", "kind": "K"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_crd_deleted_or_missing_from_a_relist_is_removed_once_and_half_relists_are_not_judged() {
        use watcher::Event::*;
        let (a, b) = ("a", "b");
        let mut s = CrdState::default();
        let step = |removed, settled| Step { removed, settled };
        // Start-up: both listed; judged only when both lists are whole.
        assert_eq!(s.apply(a, Init), step(false, false));
        assert_eq!(s.apply(b, Init), step(false, false));
        assert_eq!(s.apply(a, InitApply(established(a))), step(false, false));
        assert_eq!(s.apply(a, InitDone), step(false, false));
        assert_eq!(s.apply(b, InitApply(established(b))), step(false, false));
        assert_eq!(s.apply(b, InitDone), step(false, true));
        assert_eq!(s.served.len(), 2);
        // A relist of `a` that fails once, then finds it gone.
        assert_eq!(s.apply(a, Init), step(false, false));
        assert_eq!(s.apply(b, Apply(established(b))), step(false, false));
        assert_eq!(s.apply(a, Init), step(false, false));
        assert_eq!(s.apply(a, InitDone), step(true, true));
        assert!(!s.served.contains_key(a));
        // Deleted while watched: removed once.
        assert_eq!(s.apply(b, Delete(established(b))), step(true, true));
        assert_eq!(s.apply(b, Delete(established(b))), step(false, true));
        // A CRD that never existed is never removed.
        assert_eq!(s.apply(a, Init), step(false, false));
        assert_eq!(s.apply(a, InitDone), step(false, true));
        // A relist that finds it again keeps it.
        s.apply(a, Apply(established(a)));
        s.apply(a, Init);
        s.apply(a, InitApply(established(a)));
        assert_eq!(s.apply(a, InitDone), step(false, true));
        assert!(s.served.contains_key(a));
    }
}
