//! A template set of realistic size and shape (issue #16 part 2): a few
//! hundred nuclei templates using what the nuclei-templates project uses
//! (several requests with `req-condition`, `matchers-condition`, DSL,
//! negative and status matchers, regex, kval and JSON extractors, raw
//! requests, named matchers that each report, `info.classification`,
//! `remediation`, `metadata`), against the pages of the test target
//! ([`super::page`]). Each kind comes in variants that match and variants that
//! do not, as in a real set where most templates find nothing, and the set
//! says which findings a scan must report.

use std::collections::BTreeMap;

/// Tag of every template of the set (a scan selects the set by it).
pub const TAG: &str = "realistic-e2e";
/// Variants of each kind.
const VARIANTS: usize = 25;
/// Of which this many match.
const MATCHING: usize = 10;
const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

/// One finding a scan of the set must report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub template_id: String,
    pub matcher_name: String,
    pub severity: String,
    /// Path of `matched-at` on the target.
    pub path: String,
    pub extracted: Vec<String>,
}

/// The set: file name → template, and the findings a scan reports.
pub struct TemplateSet {
    pub files: BTreeMap<String, String>,
    pub expected: Vec<Expected>,
}

/// A kind of template: its requests and matchers for a variant that
/// matches (`true`) or not, the path it reports and what it extracts, and
/// the matcher names it reports under (one finding each).
struct Kind {
    name: &'static str,
    body: fn(i: usize, matches: bool) -> String,
    path: &'static str,
    extracted: &'static [&'static str],
    matchers: &'static [&'static str],
}

const KINDS: [Kind; 11] = [
    Kind {
        name: "word",
        body: |i, m| {
            let word = if m {
                "Admin Login".into()
            } else {
                format!("Jenkins {i}")
            };
            get("/login")
                + &format!(
                    "    matchers:\n      - type: word\n        part: body\n        words:\n          - \"{word}\"\n"
                )
        },
        path: "/login",
        extracted: &[],
        matchers: &[""],
    },
    Kind {
        name: "and",
        body: |i, m| {
            let word = if m {
                "PHP/7.4".into()
            } else {
                format!("nginx/1.{i}")
            };
            get("/login")
                + &format!(
                    "    matchers-condition: and\n    matchers:\n      - type: status\n        status:\n          - 200\n      - type: word\n        part: header\n        words:\n          - \"{word}\"\n"
                )
        },
        path: "/login",
        extracted: &[],
        matchers: &[""],
    },
    Kind {
        name: "dsl",
        body: |i, m| {
            let expr = if m {
                "status_code == 200 && contains(body, 'demo-app')".into()
            } else {
                format!("status_code == 200 && contains(body, 'other-app-{i}')")
            };
            get("/api/version")
                + &format!(
                    "    matchers:\n      - type: dsl\n        dsl:\n          - \"{expr}\"\n"
                )
        },
        path: "/api/version",
        extracted: &[],
        matchers: &[""],
    },
    Kind {
        name: "regex",
        body: |i, m| {
            let word = if m {
                "demo-app".into()
            } else {
                format!("absent-{i}")
            };
            get("/api/version")
                + &format!(
                    "    matchers:\n      - type: word\n        words:\n          - \"{word}\"\n    extractors:\n      - type: regex\n        group: 1\n        regex:\n          - '\"version\":\"([0-9.]+)\"'\n"
                )
        },
        path: "/api/version",
        extracted: &["2.4.1"],
        matchers: &[""],
    },
    Kind {
        name: "kval",
        body: |i, m| {
            let status = if m { 200 } else { 500 + i };
            get("/login")
                + &format!(
                    "    matchers:\n      - type: status\n        status:\n          - {status}\n    extractors:\n      - type: kval\n        kval:\n          - x_powered_by\n"
                )
        },
        path: "/login",
        extracted: &["PHP/7.4.3"],
        matchers: &[""],
    },
    Kind {
        name: "json",
        body: |i, m| {
            let word = if m {
                "demo-app".into()
            } else {
                format!("absent-{i}")
            };
            get("/api/version")
                + &format!(
                    "    matchers:\n      - type: word\n        part: body\n        words:\n          - \"{word}\"\n    extractors:\n      - type: json\n        json:\n          - '.version'\n"
                )
        },
        path: "/api/version",
        extracted: &["2.4.1"],
        matchers: &[""],
    },
    Kind {
        name: "raw",
        body: |i, m| {
            let word = if m {
                "repositoryformatversion".into()
            } else {
                format!("svn-{i}")
            };
            format!(
                "http:\n  - raw:\n      - |\n        GET /.git/config HTTP/1.1\n        Host: {{{{Hostname}}}}\n\n    matchers:\n      - type: word\n        words:\n          - \"{word}\"\n"
            )
        },
        path: "/.git/config",
        extracted: &[],
        matchers: &[""],
    },
    Kind {
        name: "multi",
        body: |i, m| {
            let second = if m {
                "demo-app".into()
            } else {
                format!("absent-{i}")
            };
            get("/login")
                + &format!(
                    "      - \"{{{{BaseURL}}}}/api/version\"\n    req-condition: true\n    matchers:\n      - type: dsl\n        dsl:\n          - \"status_code_1 == 200 && contains(body_1, 'Admin Login') && contains(body_2, '{second}')\"\n"
                )
        },
        path: "/api/version",
        extracted: &[],
        matchers: &[""],
    },
    Kind {
        name: "named",
        body: |i, m| {
            let (a, b) = if m {
                ("Admin Login".into(), "PHP".into())
            } else {
                (format!("Grafana {i}"), format!("Tomcat {i}"))
            };
            get("/login")
                + &format!(
                    "    matchers-condition: or\n    matchers:\n      - type: word\n        name: login-page\n        words:\n          - \"{a}\"\n      - type: word\n        name: php\n        part: header\n        words:\n          - \"{b}\"\n"
                )
        },
        path: "/login",
        extracted: &[],
        matchers: &["login-page", "php"],
    },
    Kind {
        name: "negative",
        body: |i, m| {
            // A negative matcher fires when the word is absent.
            let word = if m {
                format!("Jenkins {i}")
            } else {
                "Admin Login".into()
            };
            get("/login")
                + &format!(
                    "    matchers:\n      - type: word\n        negative: true\n        words:\n          - \"{word}\"\n"
                )
        },
        path: "/login",
        extracted: &[],
        matchers: &[""],
    },
    Kind {
        name: "status",
        body: |i, m| {
            let status = if m { 403 } else { 401 + i };
            get("/admin")
                + &format!(
                    "    matchers:\n      - type: status\n        status:\n          - {status}\n"
                )
        },
        path: "/admin",
        extracted: &[],
        matchers: &[""],
    },
];

/// A template's one GET request of `path` on the target, up to its
/// matchers (which follow).
fn get(path: &str) -> String {
    format!("http:\n  - method: GET\n    path:\n      - \"{{{{BaseURL}}}}{path}\"\n")
}

/// The set: [`KINDS`] × 25 variants, 10 of each matching.
pub fn generate() -> TemplateSet {
    let mut files = BTreeMap::new();
    let mut expected = Vec::new();
    for kind in &KINDS {
        for i in 0..VARIANTS {
            let matches = i < MATCHING;
            let id = format!("realistic-{}-{i:02}", kind.name);
            let severity = SEVERITIES[i % SEVERITIES.len()];
            let cve = format!("CVE-2099-{:04}", 1000 + i);
            let template = format!(
                "id: {id}\n\ninfo:\n  name: Realistic {} check {i}\n  author: nuclei-operator\n  severity: {severity}\n  description: A generated template of the realistic e2e set ({} kind).\n  reference:\n    - https://example.invalid/{id}\n  remediation: Upgrade the component or restrict access to the page.\n  classification:\n    cve-id: {cve}\n    cwe-id: CWE-200\n    cvss-metrics: CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N\n    cvss-score: 5.3\n  metadata:\n    max-request: 2\n    verified: true\n  tags: {TAG},{}\n\n{}",
                kind.name,
                kind.name,
                kind.name,
                (kind.body)(i, matches)
            );
            files.insert(format!("{id}.yaml"), template);
            if matches {
                for matcher in kind.matchers {
                    expected.push(Expected {
                        template_id: id.clone(),
                        matcher_name: matcher.to_string(),
                        severity: severity.into(),
                        path: kind.path.into(),
                        extracted: kind.extracted.iter().map(|s| s.to_string()).collect(),
                    });
                }
            }
        }
    }
    expected.sort();
    TemplateSet { files, expected }
}
