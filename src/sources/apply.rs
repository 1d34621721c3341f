//! The desired `NucleiScan` of a source object, as a server-side-apply body,
//! plus the hash that lets a reconcile skip the API when nothing changed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::labels::{ANNOTATION_ERRORS, APPLIED_HASH, SOURCE_KIND_LABEL};
use crate::api::{NucleiScanSpec, SourceKind, SourceRef};
use crate::sources::annotations::{AnnotationError, Parsed};

/// Identity of a source object.
#[derive(Clone, Debug)]
pub struct Source {
    pub kind: SourceKind,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Most bytes [`describe_errors`] writes, whatever the annotations: the text
/// is stored as an annotation on the scan (annotations share a 256 KiB
/// limit) and copied into a condition.
pub const MAX_ERRORS_TEXT: usize = 4096;

/// The bad annotations, `; `-separated, for the scan annotation and the
/// Event; at most [`MAX_ERRORS_TEXT`] bytes, ending in how many were left out.
pub fn describe_errors(errors: &[AnnotationError]) -> String {
    let mut text = String::new();
    for (i, e) in errors.iter().enumerate() {
        let line = e.to_string();
        let more = format!("; and {} more", errors.len() - i);
        let sep = if text.is_empty() { "" } else { "; " };
        if text.len() + sep.len() + line.len() + more.len() > MAX_ERRORS_TEXT {
            text.push_str(if text.is_empty() { &more[2..] } else { &more });
            break;
        }
        text.push_str(sep);
        text.push_str(&line);
    }
    text
}

/// The server-side-apply body of the scan for `source`: only the fields the
/// operator owns, so fields a user set by hand survive, and an annotation that
/// is removed removes what it set.
pub fn desired_scan(
    source: &Source,
    scan_name: &str,
    targets: Vec<String>,
    parsed: &Parsed,
) -> Value {
    let mut spec = NucleiScanSpec {
        source_ref: SourceRef {
            api_version: source.api_version.clone(),
            kind: source.kind,
            name: source.name.clone(),
            namespace: source.namespace.clone(),
            uid: source.uid.clone(),
        },
        targets,
        ..Default::default()
    };
    parsed.overrides.apply(&mut spec);
    let mut annotations = BTreeMap::new();
    if !parsed.errors.is_empty() {
        annotations.insert(
            ANNOTATION_ERRORS.to_string(),
            describe_errors(&parsed.errors),
        );
    }
    let mut body = json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {
            "name": scan_name,
            "namespace": source.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "nuclei-operator",
                SOURCE_KIND_LABEL: source.kind.as_str(),
            },
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": source.api_version,
                "kind": source.kind.as_str(),
                "name": source.name,
                "uid": source.uid,
                "controller": true,
            }],
        },
        "spec": spec,
    });
    let hash = crate::hash::fnv1a_64_hex(body.to_string().as_bytes());
    body["metadata"]["annotations"][APPLIED_HASH] = Value::String(hash);
    body
}

/// The hash a desired body carries.
pub fn body_hash(body: &Value) -> Option<&str> {
    body["metadata"]["annotations"][APPLIED_HASH].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::annotations::parse;

    fn source() -> Source {
        Source {
            kind: SourceKind::Ingress,
            api_version: "networking.k8s.io/v1".into(),
            name: "web".into(),
            namespace: "prod".into(),
            uid: "u-1".into(),
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("nuclei.homelab.mortenolsen.pro/{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn the_body_owns_only_the_fields_annotations_set() {
        let parsed = parse(&annotations(&[("severity", "high,critical")]));
        let body = desired_scan(
            &source(),
            "web-ingress",
            vec!["https://a.example.com".into()],
            &parsed,
        );
        let spec = body["spec"].as_object().unwrap();
        let mut keys: Vec<&str> = spec.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["severity", "sourceRef", "targets"]);
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    }

    #[test]
    fn the_hash_changes_with_the_content_and_only_with_it() {
        let t = || vec!["https://a.example.com".to_string()];
        let a = desired_scan(
            &source(),
            "s",
            t(),
            &parse(&annotations(&[("tags", "cve")])),
        );
        let b = desired_scan(
            &source(),
            "s",
            t(),
            &parse(&annotations(&[("tags", "cve")])),
        );
        let c = desired_scan(
            &source(),
            "s",
            t(),
            &parse(&annotations(&[("tags", "xss")])),
        );
        assert_eq!(body_hash(&a), body_hash(&b));
        assert_ne!(body_hash(&a), body_hash(&c));
    }

    #[test]
    fn bad_annotations_are_carried_to_the_scan_and_the_good_ones_still_apply() {
        let parsed = parse(&annotations(&[("severity", "bogus"), ("tags", "cve")]));
        let body = desired_scan(&source(), "s", vec!["http://a".into()], &parsed);
        let errors = body["metadata"]["annotations"][ANNOTATION_ERRORS]
            .as_str()
            .unwrap();
        assert!(
            errors.contains("nuclei.homelab.mortenolsen.pro/severity"),
            "{errors}"
        );
        assert_eq!(body["spec"]["tags"], json!(["cve"]));
        assert!(body["spec"].get("severity").is_none());
    }
}
