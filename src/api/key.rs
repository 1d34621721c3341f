//! [`ScanKey`]: how a NucleiScan is named outside the API server, as the
//! dispatcher's queue key, the scanner's `--scan` argument and the `scan`
//! field of log lines.

use std::fmt;
use std::str::FromStr;

use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

/// A scan's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScanKey {
    namespace: String,
    name: String,
}

impl ScanKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ScanKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a namespaced object (a cluster-scoped one has an empty
    /// namespace, which no scan has).
    pub fn of<K: Resource>(object: &K) -> Self {
        ScanKey::new(object.namespace().unwrap_or_default(), object.name_any())
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reference a reflector store is read with.
    pub fn object_ref<K: Resource<DynamicType = ()>>(&self) -> ObjectRef<K> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

impl fmt::Display for ScanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ScanKey {
    type Err = String;

    /// `namespace/name`, both non-empty, the name without another `/`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ScanKey::new(ns, name))
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl From<ScanKey> for String {
    fn from(k: ScanKey) -> String {
        k.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_need_a_namespace_and_a_name() {
        let k: ScanKey = "team-a/web-ingress".parse().unwrap();
        assert_eq!((k.namespace(), k.name()), ("team-a", "web-ingress"));
        for bad in ["bare", "/name", "ns/", "a/b/c", ""] {
            assert!(bad.parse::<ScanKey>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn a_key_reads_back_what_it_prints(ns in "[a-z0-9-]{1,20}", name in "[a-z0-9.-]{1,40}") {
            let k = ScanKey::new(&ns, &name);
            prop_assert_eq!(k.to_string().parse::<ScanKey>(), Ok(k));
        }
    }
}
