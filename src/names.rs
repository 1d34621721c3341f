//! Kubernetes' rules for names, one copy each: DNS labels (namespaces, Job
//! names), DNS subdomains (most other object names), label keys and label
//! values. They decide what the API server accepts, so the operator checks
//! input against them before it builds objects.

/// The longest DNS label (and label value, and label key name).
pub const MAX_DNS_LABEL: usize = 63;
/// The longest DNS subdomain.
pub const MAX_DNS_SUBDOMAIN: usize = 253;

/// An RFC 1123 label: 1–63 lower-case letters, digits and `-`, starting
/// and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= MAX_DNS_LABEL && is_subdomain_part(s)
}

/// An RFC 1123 subdomain as Kubernetes checks it: at most 253 characters,
/// labels joined by `.` (Kubernetes does not cap each label at 63).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_DNS_SUBDOMAIN && s.split('.').all(is_subdomain_part)
}

/// A label value: empty, or up to 63 letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_part(s)
}

/// A label key: a name (as a label value, but not empty), optionally
/// prefixed by a DNS subdomain and `/` (`example.com/team`).
pub fn is_label_key(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(s),
    }
}

fn is_subdomain_part(s: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = s.as_bytes();
    b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= MAX_DNS_LABEL
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_short_lower_case_and_bounded_by_alphanumerics() {
        for good in ["a", "0", "web-1", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good:?}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64), "é"] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn dns_subdomains_join_labels_with_dots_up_to_253_characters() {
        let long_label = "a".repeat(64);
        for good in ["a", "nuclei-operator.v1", "a.b.c", long_label.as_str()] {
            assert!(is_dns_subdomain(good), "{good:?}");
        }
        let too_long = ["a"; 127].join(".");
        assert_eq!(too_long.len(), 253);
        assert!(is_dns_subdomain(&too_long));
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a.b-",
            "A.b",
            "a/b",
            "..",
            &format!("{too_long}a"),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn label_keys_and_values_follow_the_api_servers_rules() {
        for good in ["", "v1", "Web_1.x", &"a".repeat(63)] {
            assert!(is_label_value(good), "{good:?}");
        }
        for bad in ["-a", "a.", "a b", "a/b", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad:?}");
        }
        for good in ["team", "example.com/team", "app.kubernetes.io/name", "A_b"] {
            assert!(is_label_key(good), "{good:?}");
        }
        for bad in [
            "",
            "/team",
            "example.com/",
            "Example.com/team",
            "a/b/c",
            "-x",
        ] {
            assert!(!is_label_key(bad), "{bad:?}");
        }
    }
}
