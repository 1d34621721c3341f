//! Scan settings from Ingress / VirtualService annotations
//! (`nuclei.homelab.mortenolsen.pro/…`), the same keys as the Go operator.
//!
//! Parsing never stops at a bad value: every key is read on its own, a bad one
//! is reported in [`Parsed::errors`] (for an Event and a condition) and left
//! out of the overrides, and the rest still apply. Rules:
//!
//! * An empty (or all-white-space) value means the key is not set, as in the
//!   Go operator. `enabled` is the exception: it must say `true` or `false`.
//! * Lists are comma-separated; items are trimmed and deduplicated. An empty
//!   item (`a,,b`, a trailing comma) or any bad item rejects the *whole* key,
//!   so the user notices instead of scanning with half a list.
//! * Template ids, paths and tags must be printable ASCII without white space;
//!   control, zero-width and other non-ASCII characters are errors.
//! * Unknown keys under the prefix (typos such as `severities`) are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::api::labels::RESCAN;
use crate::api::nucleiscan::parse_timeout;
use crate::api::{MAX_RATE_LIMIT, MIN_RATE_LIMIT, NucleiScanSpec, Severity};
use crate::duration::format_duration;
use crate::scan::schedule::Schedule;

/// Prefix of every annotation the operator reads.
pub const PREFIX: &str = "nuclei.homelab.mortenolsen.pro/";
/// `true` or `false`: whether the object is scanned at all (default `true`).
pub const ENABLED: &str = "nuclei.homelab.mortenolsen.pro/enabled";
/// Comma-separated templates (paths or ids) to run.
pub const TEMPLATES: &str = "nuclei.homelab.mortenolsen.pro/templates";
/// Comma-separated severities to run (info, low, medium, high, critical, unknown).
pub const SEVERITY: &str = "nuclei.homelab.mortenolsen.pro/severity";
/// Rescan schedule: 5-field cron, `@daily`-style, or `@every <duration>`.
pub const SCHEDULE: &str = "nuclei.homelab.mortenolsen.pro/schedule";
/// Scan timeout: see [`parse_timeout`].
pub const TIMEOUT: &str = "nuclei.homelab.mortenolsen.pro/timeout";
/// Scanner image.
pub const SCANNER_IMAGE: &str = "nuclei.homelab.mortenolsen.pro/scanner-image";
/// Comma-separated templates or template directories to skip.
pub const EXCLUDE_TEMPLATES: &str = "nuclei.homelab.mortenolsen.pro/exclude-templates";
/// Requests per second, [`MIN_RATE_LIMIT`]..=[`MAX_RATE_LIMIT`].
pub const RATE_LIMIT: &str = "nuclei.homelab.mortenolsen.pro/rate-limit";
/// Comma-separated template tags to run.
pub const TAGS: &str = "nuclei.homelab.mortenolsen.pro/tags";
/// Comma-separated template tags to skip.
pub const EXCLUDE_TAGS: &str = "nuclei.homelab.mortenolsen.pro/exclude-tags";

/// Every annotation key the operator understands.
pub const KNOWN_KEYS: [&str; 11] = [
    ENABLED,
    TEMPLATES,
    SEVERITY,
    SCHEDULE,
    TIMEOUT,
    SCANNER_IMAGE,
    EXCLUDE_TEMPLATES,
    RATE_LIMIT,
    TAGS,
    EXCLUDE_TAGS,
    RESCAN,
];

/// Most items a list annotation may have.
pub const MAX_LIST_ITEMS: usize = 256;
/// Longest single list item (template path, id or tag).
pub const MAX_ITEM_LEN: usize = 256;
/// Longest scanner image reference.
pub const MAX_IMAGE_LEN: usize = 512;

// Error values are echoed into Events and conditions; a huge value must not be.
const MAX_ECHOED_VALUE: usize = 200;

/// The result of reading an object's annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// Whether the object should be scanned. `true` unless `enabled` says
    /// `false`; an unreadable `enabled` counts as `true` (and is an error).
    pub enabled: bool,
    /// The settings the annotations override; keys with errors are `None`.
    pub overrides: Overrides,
    /// One entry per bad key, in key order.
    pub errors: Vec<AnnotationError>,
}

/// Settings from annotations; `None` where the annotation is absent, empty or
/// bad.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `templates`.
    pub templates: Option<Vec<String>>,
    /// `severity`.
    pub severity: Option<Vec<Severity>>,
    /// `schedule`, validated, as written (trimmed).
    pub schedule: Option<String>,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `scanner-image`.
    pub scanner_image: Option<String>,
    /// `exclude-templates`.
    pub exclude_templates: Option<Vec<String>>,
    /// `rate-limit`.
    pub rate_limit: Option<i32>,
    /// `tags`.
    pub tags: Option<Vec<String>>,
    /// `exclude-tags`.
    pub exclude_tags: Option<Vec<String>>,
}

/// A bad annotation: which, its value (cut to 200 characters), and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={value:?}: {reason}")]
pub struct AnnotationError {
    /// The full annotation key.
    pub key: String,
    /// The value as written, cut to 200 characters.
    pub value: String,
    /// What is wrong and what was done about it.
    pub reason: String,
}

/// Refuses a `scanner-image` annotation the operator's image policy does
/// not allow: it becomes an error naming ALLOWED_SCANNER_IMAGES, and the
/// scan keeps the default image.
pub fn enforce_image_policy(parsed: &mut Parsed, policy: &crate::settings::ImagePolicy) {
    if let Some(image) = parsed.overrides.scanner_image.take() {
        if policy.allows(&image) {
            parsed.overrides.scanner_image = Some(image);
        } else {
            parsed.errors.push(AnnotationError {
                key: SCANNER_IMAGE.to_owned(),
                value: image.chars().take(200).collect(),
                reason: format!(
                    "{}; the scan runs with the default image",
                    policy.refusal(&image)
                ),
            });
            parsed.errors.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
}

/// Reads the `nuclei.homelab.mortenolsen.pro/` annotations of an Ingress or
/// VirtualService. Other annotations are ignored.
pub fn parse(annotations: &BTreeMap<String, String>) -> Parsed {
    let mut parsed = Parsed {
        enabled: true,
        overrides: Overrides::default(),
        errors: Vec::new(),
    };
    for (key, value) in annotations.range(PREFIX.to_owned()..) {
        let Some(name) = key.strip_prefix(PREFIX) else {
            break;
        };
        let o = &mut parsed.overrides;
        let result: Result<(), String> = match key.as_str() {
            ENABLED => parse_enabled(value).map(|e| parsed.enabled = e),
            TEMPLATES => parse_list(value, check_template_path).map(|v| o.templates = v),
            EXCLUDE_TEMPLATES => {
                parse_list(value, check_template_path).map(|v| o.exclude_templates = v)
            }
            TAGS => parse_list(value, check_token).map(|v| o.tags = v),
            EXCLUDE_TAGS => parse_list(value, check_token).map(|v| o.exclude_tags = v),
            SEVERITY => parse_severities(value).map(|v| o.severity = v),
            SCHEDULE => parse_schedule(value).map(|v| o.schedule = v),
            TIMEOUT => non_empty(value)
                .map(parse_timeout)
                .transpose()
                .map(|v| o.timeout = v),
            SCANNER_IMAGE => parse_image(value).map(|v| o.scanner_image = v),
            RATE_LIMIT => non_empty(value)
                .map(parse_rate_limit)
                .transpose()
                .map(|v| o.rate_limit = v),
            RESCAN => Ok(()),
            _ => Err(unknown_key_reason(name)),
        };
        if let Err(reason) = result {
            parsed.errors.push(AnnotationError {
                key: key.clone(),
                value: echo(value),
                reason,
            });
        }
    }
    parsed
}

impl Overrides {
    /// Applies the overrides on top of `spec` (annotations win over the
    /// NucleiScan spec; operator defaults fill what neither sets, later).
    pub fn apply(&self, spec: &mut NucleiScanSpec) {
        if let Some(v) = &self.templates {
            spec.templates = v.clone();
        }
        if let Some(v) = &self.severity {
            spec.severity = v.clone();
        }
        if let Some(v) = &self.schedule {
            spec.schedule = Some(v.clone());
        }
        if let Some(v) = &self.exclude_templates {
            spec.exclude_templates = v.clone();
        }
        if let Some(v) = self.rate_limit {
            spec.rate_limit = Some(v);
        }
        if let Some(v) = &self.tags {
            spec.tags = v.clone();
        }
        if let Some(v) = &self.exclude_tags {
            spec.exclude_tags = v.clone();
        }
        if self.timeout.is_some() || self.scanner_image.is_some() {
            let config = spec.scanner_config.get_or_insert_with(Default::default);
            if let Some(v) = self.timeout {
                // Go's metav1.Duration form ("30m0s"), as the Go operator wrote it.
                config.timeout = Some(format_duration(v));
            }
            if let Some(v) = &self.scanner_image {
                config.image = Some(v.clone());
            }
        }
    }

    /// Whether no annotation overrides anything.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

fn non_empty(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|v| !v.is_empty())
}

fn parse_enabled(value: &str) -> Result<bool, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("expected true or false; scanning stays enabled".to_owned())
    }
}

/// Splits a comma-separated list; `Ok(None)` for an empty value.
fn parse_list(
    value: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Option<Vec<String>>, String> {
    let Some(value) = non_empty(value) else {
        return Ok(None);
    };
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!(
                "item {} is empty (a stray comma?); the whole list is ignored until it is fixed",
                i + 1
            ));
        }
        check(item).map_err(|why| {
            format!("item {item:?} {why}; the whole list is ignored until it is fixed")
        })?;
        if seen.insert(item) {
            items.push(item.to_owned());
        }
    }
    if items.len() > MAX_LIST_ITEMS {
        return Err(format!(
            "{} items, more than the {MAX_LIST_ITEMS} allowed; the whole list is ignored",
            items.len()
        ));
    }
    Ok(Some(items))
}

/// A template path, template id or tag: printable ASCII, no white space.
fn check_token(item: &str) -> Result<(), String> {
    if let Some(c) = item.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "contains {}; template ids, paths and tags are printable ASCII without spaces",
            describe_char(c)
        ));
    }
    if item.len() > MAX_ITEM_LEN {
        return Err(format!("is longer than {MAX_ITEM_LEN} characters"));
    }
    Ok(())
}

fn check_template_path(item: &str) -> Result<(), String> {
    check_token(item)?;
    if crate::api::is_template_path(item) {
        Ok(())
    } else {
        Err(crate::api::TEMPLATE_PATH_RULE_MESSAGE.to_owned())
    }
}

fn parse_severities(value: &str) -> Result<Option<Vec<Severity>>, String> {
    let Some(items) = parse_list(value, |item| {
        check_token(item)?;
        item.parse::<Severity>().map(|_| ())
    })?
    else {
        return Ok(None);
    };
    let mut severities: Vec<Severity> = Vec::new();
    for item in &items {
        let sev: Severity = item.parse().expect("checked by parse_list");
        if !severities.contains(&sev) {
            severities.push(sev);
        }
    }
    Ok(Some(severities))
}

fn parse_schedule(value: &str) -> Result<Option<String>, String> {
    let Some(v) = non_empty(value) else {
        return Ok(None);
    };
    if let Some(c) = v.chars().find(|c| c.is_control() || is_invisible(*c)) {
        return Err(format!("the schedule contains {}", describe_char(c)));
    }
    Schedule::parse(v).map(|s| Some(s.source().to_owned()))
}

fn parse_image(value: &str) -> Result<Option<String>, String> {
    let Some(v) = non_empty(value) else {
        return Ok(None);
    };
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')))
    {
        return Err(format!(
            "contains {}, which an image reference cannot (expected e.g. registry.example.com/nuclei:v3)",
            describe_char(c)
        ));
    }
    if !v.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("an image reference starts with a letter or digit".to_owned());
    }
    if v.len() > MAX_IMAGE_LEN {
        return Err(format!(
            "the image reference is longer than {MAX_IMAGE_LEN} characters"
        ));
    }
    Ok(Some(v.to_owned()))
}

fn parse_rate_limit(v: &str) -> Result<i32, String> {
    let n: i64 = v.parse().map_err(|_| {
        format!(
            "expected a whole number of requests per second, {MIN_RATE_LIMIT} to {MAX_RATE_LIMIT}"
        )
    })?;
    if n < i64::from(MIN_RATE_LIMIT) {
        return Err(format!(
            "the rate limit must be at least {MIN_RATE_LIMIT} request per second"
        ));
    }
    if n > i64::from(MAX_RATE_LIMIT) {
        return Err(format!(
            "the rate limit must be at most {MAX_RATE_LIMIT} requests per second"
        ));
    }
    Ok(n as i32)
}

fn unknown_key_reason(name: &str) -> String {
    let known: Vec<&str> = KNOWN_KEYS
        .iter()
        .map(|k| k.strip_prefix(PREFIX).unwrap_or(k))
        .collect();
    let lower = name.to_ascii_lowercase();
    let hint = known
        .iter()
        .map(|k| (edit_distance(&lower, k), k))
        .filter(|(d, k)| *d <= (k.len().max(lower.len()) / 3).max(2))
        .min()
        .map(|(_, k)| format!(" (did you mean {PREFIX}{k}?)"))
        .unwrap_or_default();
    format!("unknown annotation{hint}; known keys: {}", known.join(", "))
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn echo(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHOED_VALUE) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Zero-width, soft-hyphen and direction-control characters: they render as
/// nothing, so a value that holds one looks right and is not.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// Names a character for an error message, making invisible ones visible.
pub(crate) fn describe_char(c: char) -> String {
    if c == ' ' {
        "a space".to_owned()
    } else if c.is_whitespace() {
        format!("white space (U+{:04X})", c as u32)
    } else if c.is_control() {
        format!("a control character (U+{:04X})", c as u32)
    } else if is_invisible(c) {
        format!("an invisible character (U+{:04X})", c as u32)
    } else {
        format!("the non-ASCII character {c:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ScannerConfig, SourceRef};

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_one(key: &str, value: &str) -> Parsed {
        parse(&annotations(&[(key, value)]))
    }

    /// Parses one annotation and expects an error naming it whose reason
    /// contains `reason`; returns the overrides for further checks.
    fn rejects(key: &str, value: &str, reason: &str) -> Overrides {
        let p = parse_one(key, value);
        assert_eq!(
            p.errors.len(),
            1,
            "{key}={value:?} should give one error, got {p:?}"
        );
        let e = &p.errors[0];
        assert_eq!(e.key, key);
        assert!(
            e.reason.contains(reason),
            "{key}={value:?}: reason {:?} should contain {reason:?}",
            e.reason
        );
        assert!(p.enabled, "a bad value never disables scanning");
        p.overrides
    }

    #[test]
    fn no_annotations_means_enabled_with_no_overrides() {
        let p = parse(&BTreeMap::new());
        assert!(p.enabled);
        assert!(p.overrides.is_empty());
        assert!(p.errors.is_empty());
    }

    #[test]
    fn unrelated_annotations_are_ignored() {
        let p = parse(&annotations(&[
            ("kubernetes.io/ingress.class", "nginx"),
            ("nginx.ingress.kubernetes.io/rewrite-target", "/"),
            ("zzz.example.com/anything", "x"),
        ]));
        assert!(p.overrides.is_empty());
        assert!(p.errors.is_empty());
    }

    #[test]
    fn enabled_accepts_true_and_false_in_any_case() {
        let cases = [
            ("true", true),
            ("TRUE", true),
            (" True ", true),
            ("false", false),
            ("False", false),
            ("FALSE\n", false),
        ];
        for (value, want) in cases {
            let p = parse_one(ENABLED, value);
            assert_eq!(p.enabled, want, "{value:?}");
            assert!(p.errors.is_empty(), "{value:?}");
        }
    }

    #[test]
    fn an_unreadable_enabled_is_an_error_and_keeps_scanning_on() {
        for value in ["", "yes", "no", "0", "1", "off", "tru", "false\u{200B}"] {
            let o = rejects(ENABLED, value, "expected true or false");
            assert!(o.is_empty());
        }
    }

    #[test]
    fn good_values_become_overrides() {
        let p = parse(&annotations(&[
            (ENABLED, "true"),
            (
                TEMPLATES,
                "cves/, http/exposures/configs/git-config.yaml ,cves/",
            ),
            (SEVERITY, "HIGH, critical,high"),
            (SCHEDULE, " 0 3 * * 1-5 "),
            (TIMEOUT, "1h30m"),
            (
                SCANNER_IMAGE,
                "registry.example.com:5000/sec/nuclei:v3.4@sha256:abc123",
            ),
            (EXCLUDE_TEMPLATES, "dos/"),
            (RATE_LIMIT, " 150 "),
            (TAGS, "cve,tech"),
            (EXCLUDE_TAGS, "intrusive,fuzz"),
            (RESCAN, "2025-01-01T00:00:00Z"),
        ]));
        assert!(p.errors.is_empty(), "{:#?}", p.errors);
        assert_eq!(
            p.overrides,
            Overrides {
                templates: Some(vec![
                    "cves/".into(),
                    "http/exposures/configs/git-config.yaml".into()
                ]),
                severity: Some(vec![Severity::High, Severity::Critical]),
                schedule: Some("0 3 * * 1-5".into()),
                timeout: Some(Duration::from_secs(5400)),
                scanner_image: Some(
                    "registry.example.com:5000/sec/nuclei:v3.4@sha256:abc123".into()
                ),
                exclude_templates: Some(vec!["dos/".into()]),
                rate_limit: Some(150),
                tags: Some(vec!["cve".into(), "tech".into()]),
                exclude_tags: Some(vec!["intrusive".into(), "fuzz".into()]),
            }
        );
    }

    #[test]
    fn empty_values_mean_not_set() {
        for key in [
            TEMPLATES,
            SEVERITY,
            SCHEDULE,
            TIMEOUT,
            SCANNER_IMAGE,
            EXCLUDE_TEMPLATES,
            RATE_LIMIT,
            TAGS,
            EXCLUDE_TAGS,
        ] {
            for value in ["", "   "] {
                let p = parse_one(key, value);
                assert!(p.errors.is_empty(), "{key}={value:?}: {:?}", p.errors);
                assert!(p.overrides.is_empty(), "{key}={value:?}");
            }
        }
    }

    #[test]
    fn malformed_lists_are_rejected_whole() {
        let cases = [
            (TEMPLATES, "a,,b", "item 2 is empty"),
            (TEMPLATES, "a,b,", "item 3 is empty"),
            (TEMPLATES, ",a", "item 1 is empty"),
            (TAGS, "cve, ,tech", "item 2 is empty"),
            (TAGS, "cve tech", "contains a space"),
            (TAGS, "cve\ttech", "white space (U+0009)"),
            (TAGS, "cve\u{7}", "control character (U+0007)"),
            (TAGS, "c\u{200B}ve", "invisible character (U+200B)"),
            (EXCLUDE_TAGS, "\u{202E}zzuf", "invisible character (U+202E)"),
            (TEMPLATES, "cves/\u{FEFF}", "invisible character (U+FEFF)"),
            (TEMPLATES, "café-template", "non-ASCII character 'é'"),
            (EXCLUDE_TEMPLATES, "ｄｏｓ/", "non-ASCII character"),
            (TEMPLATES, &"x".repeat(MAX_ITEM_LEN + 1), "longer than"),
        ];
        for (key, value, reason) in cases {
            let o = rejects(key, value, reason);
            assert!(o.is_empty(), "{key}={value:?} must not apply half a list");
            let p = parse_one(key, value);
            assert!(p.errors[0].reason.contains("whole list is ignored"));
        }
        let many = (0..=MAX_LIST_ITEMS)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>();
        rejects(TAGS, &many.join(","), "more than the 256 allowed");
    }

    #[test]
    fn a_scanner_image_outside_the_policy_is_an_error_and_the_default_image_stays() {
        let policy = crate::settings::ImagePolicy {
            default: "nuclei-operator:1".into(),
            allowed: vec!["registry.example.com/sec/*".into()],
        };
        let mut p = parse_one(SCANNER_IMAGE, "evil.example.com/miner:latest");
        enforce_image_policy(&mut p, &policy);
        assert_eq!(p.overrides.scanner_image, None);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].key, SCANNER_IMAGE);
        assert!(p.errors[0].reason.contains("ALLOWED_SCANNER_IMAGES"));
        let mut p = parse_one(SCANNER_IMAGE, "registry.example.com/sec/nuclei:2");
        enforce_image_policy(&mut p, &policy);
        assert_eq!(
            p.overrides.scanner_image.as_deref(),
            Some("registry.example.com/sec/nuclei:2")
        );
        assert!(p.errors.is_empty());
    }

    #[test]
    fn template_paths_outside_the_templates_directory_are_errors() {
        for bad in ["/etc/passwd", "../secrets", "http/../../x", ".."] {
            assert_eq!(rejects(TEMPLATES, bad, "no '..'").templates, None);
            assert_eq!(
                rejects(EXCLUDE_TEMPLATES, bad, "no '..'").exclude_templates,
                None
            );
        }
        let fine = parse_one(TEMPLATES, "http/cves/,a..b.yaml,./x.yaml");
        assert!(fine.errors.is_empty(), "{:?}", fine.errors);
    }

    #[test]
    fn unknown_severities_are_rejected_whole() {
        for (value, reason) in [
            ("high,severe", "unknown severity \"severe\""),
            ("HIGH,,low", "item 2 is empty"),
            ("crit", "unknown severity"),
            ("hіgh", "non-ASCII character 'і'"),
        ] {
            let o = rejects(SEVERITY, value, reason);
            assert!(o.severity.is_none());
        }
    }

    #[test]
    fn schedules_are_validated() {
        for good in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 0 * * 0",
            "0 0 1,15 * MON-FRI",
            "@daily",
            "@hourly",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
            "@every 6h",
            "@every 1h30m",
        ] {
            let p = parse_one(SCHEDULE, good);
            assert!(p.errors.is_empty(), "{good:?}: {:?}", p.errors);
            assert_eq!(p.overrides.schedule.as_deref(), Some(good));
        }
        for bad in [
            "every day",
            "* * * *",
            "0 0 0 * * *",
            "61 * * * *",
            "0 25 * * *",
            "0 0 * * 8",
            "@reboot",
            "@every",
            "@every 10s",
            "@every soon",
            "0 3 * * *\u{200B}",
            "0 3\u{0} * * *",
        ] {
            let o = rejects(SCHEDULE, bad, "");
            assert!(o.schedule.is_none(), "{bad:?}");
        }
        rejects(
            SCHEDULE,
            "0 3 * * *\u{200B}",
            "invisible character (U+200B)",
        );
    }

    #[test]
    fn timeouts_must_be_go_durations_within_bounds() {
        for (value, want) in [
            ("30m", 1800),
            ("1h30m", 5400),
            ("45s", 45),
            ("24h", 86400),
            ("1.5h", 5400),
        ] {
            let p = parse_one(TIMEOUT, value);
            assert!(p.errors.is_empty(), "{value:?}: {:?}", p.errors);
            assert_eq!(p.overrides.timeout, Some(Duration::from_secs(want)));
        }
        for (value, reason) in [
            ("0", "zero"),
            ("0s", "zero"),
            ("500ms", "below the minimum"),
            ("24h1s", "above the maximum"),
            ("999999h", "above the maximum"),
            ("-5m", "negative"),
            ("30", "missing unit"),
            ("7d", "24h"),
            ("30 m", "unexpected character"),
            ("thirty minutes", "expected a number"),
            ("99999999999999999999999h", "too large"),
        ] {
            let o = rejects(TIMEOUT, value, reason);
            assert!(o.timeout.is_none());
        }
    }

    #[test]
    fn rate_limits_must_be_whole_numbers_within_bounds() {
        for (value, want) in [("1", 1), ("10000", 10_000), ("+5", 5)] {
            let p = parse_one(RATE_LIMIT, value);
            assert!(p.errors.is_empty(), "{value:?}");
            assert_eq!(p.overrides.rate_limit, Some(want));
        }
        for (value, reason) in [
            ("0", "at least 1"),
            ("-10", "at least 1"),
            ("10001", "at most 10000"),
            ("99999999999999999999", "whole number"),
            ("1.5", "whole number"),
            ("100rps", "whole number"),
            ("１０", "whole number"),
        ] {
            let o = rejects(RATE_LIMIT, value, reason);
            assert!(o.rate_limit.is_none());
        }
    }

    #[test]
    fn scanner_images_must_look_like_image_references() {
        for (value, reason) in [
            ("nuclei latest", "a space"),
            ("nuclei:v3\u{200D}", "invisible character (U+200D)"),
            ("régistry/nuclei", "non-ASCII"),
            ("-nuclei", "starts with a letter or digit"),
            ("nuclei;rm -rf", "';'"),
            (&"a".repeat(MAX_IMAGE_LEN + 1), "longer than"),
        ] {
            let o = rejects(SCANNER_IMAGE, value, reason);
            assert!(o.scanner_image.is_none());
        }
    }

    #[test]
    fn unknown_keys_under_the_prefix_are_errors_with_a_hint() {
        rejects(
            "nuclei.homelab.mortenolsen.pro/severities",
            "high",
            "did you mean nuclei.homelab.mortenolsen.pro/severity?",
        );
        rejects(
            "nuclei.homelab.mortenolsen.pro/Enabled",
            "false",
            "did you mean nuclei.homelab.mortenolsen.pro/enabled?",
        );
        rejects(
            "nuclei.homelab.mortenolsen.pro/exclude-tag",
            "x",
            "did you mean nuclei.homelab.mortenolsen.pro/exclude-tags?",
        );
        let o = rejects("nuclei.homelab.mortenolsen.pro/colour", "x", "known keys:");
        assert!(o.is_empty());
        let p = parse_one("nuclei.homelab.mortenolsen.pro/colour", "x");
        assert!(!p.errors[0].reason.contains("did you mean"));
    }

    #[test]
    fn a_bad_key_never_stops_the_others() {
        let p = parse(&annotations(&[
            (ENABLED, "maybe"),
            (TEMPLATES, "a,,b"),
            (SEVERITY, "high"),
            (SCHEDULE, "whenever"),
            (TIMEOUT, "0"),
            (RATE_LIMIT, "50"),
            (TAGS, "cve"),
            (EXCLUDE_TAGS, "x y"),
            ("nuclei.homelab.mortenolsen.pro/typo", "1"),
        ]));
        assert!(p.enabled);
        let keys: Vec<&str> = p.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                ENABLED,
                EXCLUDE_TAGS,
                SCHEDULE,
                TEMPLATES,
                TIMEOUT,
                "nuclei.homelab.mortenolsen.pro/typo"
            ]
        );
        assert_eq!(
            p.overrides,
            Overrides {
                severity: Some(vec![Severity::High]),
                rate_limit: Some(50),
                tags: Some(vec!["cve".into()]),
                ..Default::default()
            }
        );
    }

    #[test]
    fn errors_echo_a_cut_value_and_read_well() {
        let long = "x,".repeat(500) + ",";
        let p = parse_one(TAGS, &long);
        let e = &p.errors[0];
        assert_eq!(e.value.chars().count(), MAX_ECHOED_VALUE + 1);
        assert!(e.value.ends_with('…'));
        let p = parse_one(RATE_LIMIT, "0");
        assert_eq!(
            p.errors[0].to_string(),
            "annotation nuclei.homelab.mortenolsen.pro/rate-limit=\"0\": \
             the rate limit must be at least 1 request per second"
        );
    }

    fn spec() -> NucleiScanSpec {
        NucleiScanSpec {
            source_ref: SourceRef::default(),
            targets: vec!["https://a.example.com".into()],
            templates: vec!["from-spec/".into()],
            severity: vec![Severity::Low],
            schedule: Some("@weekly".into()),
            tags: vec!["spec-tag".into()],
            rate_limit: Some(10),
            scanner_config: Some(ScannerConfig {
                image: Some("spec-image".into()),
                timeout: Some("10m".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn annotations_override_the_spec_and_leave_the_rest() {
        let p = parse(&annotations(&[
            (SEVERITY, "critical"),
            (TIMEOUT, "45m"),
            (EXCLUDE_TAGS, "dos"),
        ]));
        let mut s = spec();
        p.overrides.apply(&mut s);
        let want = NucleiScanSpec {
            severity: vec![Severity::Critical],
            exclude_tags: vec!["dos".into()],
            scanner_config: Some(ScannerConfig {
                image: Some("spec-image".into()),
                timeout: Some("45m0s".into()),
                ..Default::default()
            }),
            ..spec()
        };
        assert_eq!(s, want);
    }

    #[test]
    fn applying_no_overrides_changes_nothing() {
        let mut s = spec();
        Overrides::default().apply(&mut s);
        assert_eq!(s, spec());
    }

    #[test]
    fn every_override_reaches_its_spec_field() {
        let p = parse(&annotations(&[
            (TEMPLATES, "t/"),
            (SEVERITY, "info"),
            (SCHEDULE, "@daily"),
            (TIMEOUT, "2h"),
            (SCANNER_IMAGE, "img:1"),
            (EXCLUDE_TEMPLATES, "x/"),
            (RATE_LIMIT, "7"),
            (TAGS, "a"),
            (EXCLUDE_TAGS, "b"),
        ]));
        assert!(p.errors.is_empty());
        let mut s = NucleiScanSpec::default();
        p.overrides.apply(&mut s);
        assert_eq!(s.templates, ["t/"]);
        assert_eq!(s.severity, [Severity::Info]);
        assert_eq!(s.schedule.as_deref(), Some("@daily"));
        assert_eq!(s.exclude_templates, ["x/"]);
        assert_eq!(s.rate_limit, Some(7));
        assert_eq!(s.tags, ["a"]);
        assert_eq!(s.exclude_tags, ["b"]);
        let cfg = s.scanner_config.unwrap();
        assert_eq!(cfg.timeout.as_deref(), Some("2h0m0s"));
        assert_eq!(cfg.image.as_deref(), Some("img:1"));
    }

    #[test]
    fn timeouts_parse_with_the_shared_bounds() {
        assert_eq!(parse_timeout("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_timeout("25h").is_err());
        assert!(parse_timeout("0").is_err());
        let cfg = ScannerConfig {
            timeout: Some("0s".into()),
            ..Default::default()
        };
        assert!(cfg.parsed_timeout().is_err());
        assert_eq!(ScannerConfig::default().parsed_timeout(), Ok(None));
    }
}

/// Whatever a namespace user writes into annotations: no panic, bounded text.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::api::nucleiscan::{MAX_TIMEOUT, MIN_TIMEOUT};
    use crate::sources::apply::{MAX_ERRORS_TEXT, describe_errors};
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(KNOWN_KEYS.to_vec()).prop_map(str::to_owned),
            1 => "[a-z-]{1,20}".prop_map(|k| format!("{PREFIX}{k}")),
            1 => "[a-z./-]{1,30}",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,60}",
            "[0-9.]{1,40}[a-zµ]{0,3}",
            "(\\*|[0-9]{1,3}|@every [0-9]+[smh]|@daily)( [0-9*/,-]{1,6}){0,6}",
            "[a-z0-9/,.-]{0,400}",
            Just("true".to_owned()),
            Just("false".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn any_annotations_parse_without_panicking_and_their_errors_stay_bounded(
            annotations in prop::collection::btree_map(key(), value(), 0..40)
        ) {
            let parsed = parse(&annotations);
            prop_assert!(describe_errors(&parsed.errors).len() <= MAX_ERRORS_TEXT);
            let mut spec = crate::api::NucleiScanSpec::default();
            parsed.overrides.apply(&mut spec);
            if let Some(t) = parsed.overrides.timeout {
                prop_assert!((MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t));
            }
            for item in spec.templates.iter().chain(&spec.tags).chain(&spec.exclude_templates) {
                prop_assert!(item.len() <= MAX_ITEM_LEN);
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        #[test]
        fn thousands_of_bad_keys_give_a_bounded_error_text(n in 1usize..2000) {
            let annotations: BTreeMap<String, String> =
                (0..n).map(|i| (format!("{PREFIX}unknown-{i}"), "x".repeat(300))).collect();
            let parsed = parse(&annotations);
            prop_assert_eq!(parsed.errors.len(), n);
            let text = describe_errors(&parsed.errors);
            prop_assert!(text.len() <= MAX_ERRORS_TEXT, "{}", text.len());
            prop_assert!(n == 1 || text.contains("more") || text.len() < MAX_ERRORS_TEXT);
        }
    }
}
