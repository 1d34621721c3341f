//! SCAN_NAMESPACE_SELECTOR: the namespaces whose sources are scanned, chosen
//! by their labels. A source in another namespace gets no scan (an existing
//! one is deleted), as if scanning were disabled by annotation; a namespace
//! whose labels start or stop matching has its sources reconciled again.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tracing::{debug, info};

use super::triggers::Triggers;
use crate::cache;
use crate::names;

/// One requirement of an equality-based label selector: `key=value`
/// (or `key==value`), `key!=value`, `key` (the label exists), `!key` (it
/// does not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    DoesNotExist(String),
}

impl LabelRequirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            // As in Kubernetes: a missing label is not equal to the value.
            Self::NotEquals(k, v) => labels.get(k) != Some(v),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals(k, v) => write!(f, "{k}={v}"),
            Self::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Self::Exists(k) => write!(f, "{k}"),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// Parses one requirement; the setting is a comma-separated list of them.
pub fn parse_label_requirement(s: &str) -> Result<LabelRequirement, String> {
    let s = s.trim();
    let req = if let Some((k, v)) = s.split_once("!=") {
        LabelRequirement::NotEquals(k.trim().into(), v.trim().into())
    } else if let Some((k, v)) = s.split_once("==").or_else(|| s.split_once('=')) {
        LabelRequirement::Equals(k.trim().into(), v.trim().into())
    } else if let Some(k) = s.strip_prefix('!') {
        LabelRequirement::DoesNotExist(k.trim().into())
    } else {
        LabelRequirement::Exists(s.into())
    };
    let (key, value) = match &req {
        LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => (k, Some(v)),
        LabelRequirement::Exists(k) | LabelRequirement::DoesNotExist(k) => (k, None),
    };
    if !names::is_label_key(key) {
        return Err(format!(
            "{s:?}: {key:?} is not a label key (such as team or example.com/scan); write key=value, key!=value, key or !key"
        ));
    }
    if let Some(v) = value
        && !names::is_label_value(v)
    {
        return Err(format!("{s:?}: {v:?} is not a label value"));
    }
    Ok(req)
}

/// Whether namespace labels satisfy every requirement (an empty list
/// matches every namespace).
pub fn selects(selector: &[LabelRequirement], labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|r| r.matches(labels))
}

/// The namespaces in scope, from a cache of Namespace objects.
#[derive(Clone)]
pub struct NamespaceScope {
    selector: Vec<LabelRequirement>,
    namespaces: Store<Namespace>,
}

impl NamespaceScope {
    /// Starts the Namespace cache; every namespace that enters or leaves the
    /// scope has its sources reconciled through `triggers`. `None` when the
    /// selector is empty: every namespace is in scope and none is watched.
    pub fn start(
        client: kube::Client,
        selector: Vec<LabelRequirement>,
        triggers: Triggers,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<NamespaceScope> {
        if selector.is_empty() {
            return None;
        }
        let (namespaces, events) = cache::reflect(
            Api::<Namespace>::all(client),
            watcher::Config::default().any_semantic(),
            |_| {},
        );
        let described: Vec<String> = selector.iter().map(|r| r.to_string()).collect();
        info!(
            selector = described.join(","),
            "scanning only selected namespaces"
        );
        let sel = selector.clone();
        tokio::spawn(async move {
            let mut in_scope: HashMap<String, bool> = HashMap::new();
            let mut events = std::pin::pin!(events);
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = shutdown.cancelled() => return,
                };
                let Some(event) = event else { return };
                let ns = match event {
                    Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => ns,
                    // A deleted namespace takes its sources with it.
                    Ok(watcher::Event::Delete(ns)) => {
                        in_scope.remove(&ns.metadata.name.unwrap_or_default());
                        continue;
                    }
                    _ => continue,
                };
                let name = ns.metadata.name.clone().unwrap_or_default();
                let now = selects(
                    &sel,
                    ns.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                );
                if in_scope.insert(name.clone(), now) != Some(now) {
                    debug!(namespace = name, in_scope = now, "namespace scope changed");
                    triggers.notify_namespace(&name);
                }
            }
        });
        Some(NamespaceScope {
            selector,
            namespaces,
        })
    }

    /// Waits until the Namespace cache has listed every namespace.
    pub async fn ready(&self) -> bool {
        cache::ready(&self.namespaces).await
    }

    /// Whether sources in `namespace` are scanned.
    pub fn contains(&self, namespace: &str) -> bool {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .is_some_and(|ns| {
                selects(
                    &self.selector,
                    ns.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requirements_parse_as_kubernetes_writes_them() {
        use LabelRequirement::*;
        for (s, want) in [
            ("team=web", Equals("team".into(), "web".into())),
            ("team==web", Equals("team".into(), "web".into())),
            (
                " example.com/scan != off ",
                NotEquals("example.com/scan".into(), "off".into()),
            ),
            ("scan", Exists("scan".into())),
            ("!scan", DoesNotExist("scan".into())),
            ("tier=", Equals("tier".into(), "".into())),
        ] {
            assert_eq!(parse_label_requirement(s).unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "=web",
            "team=web space",
            "-team",
            "a/b/c=1",
            "team in (a)",
            "x=y=z",
        ] {
            let e = parse_label_requirement(bad).unwrap_err();
            assert!(e.contains("label"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_namespace_is_selected_when_it_meets_every_requirement() {
        let sel: Vec<LabelRequirement> = ["team=web", "!quarantine"]
            .iter()
            .map(|s| parse_label_requirement(s).unwrap())
            .collect();
        assert!(selects(&sel, &labels(&[("team", "web")])));
        assert!(!selects(&sel, &labels(&[("team", "db")])));
        assert!(!selects(
            &sel,
            &labels(&[("team", "web"), ("quarantine", "")])
        ));
        assert!(!selects(&sel, &labels(&[])));
        let opt_out = [parse_label_requirement("scan!=off").unwrap()];
        assert!(selects(&opt_out, &labels(&[])));
        assert!(!selects(&opt_out, &labels(&[("scan", "off")])));
        assert!(selects(&[], &labels(&[])));
    }
}
