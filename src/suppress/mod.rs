//! Accepted findings: which findings the `NucleiFindingException`s of a
//! namespace suppress, and the marks that say so in a scan's status.
//!
//! An exception is *active* from its creation until `spec.expires`; an
//! active one marks each stored finding it matches with
//! `suppressedBy: <its name>`, and the scan's summary counts them in
//! `suppressedFindings`/`suppressedBySeverity`. Metrics subtract those
//! counts; the `NewFindings` Event and notifications leave suppressed
//! findings out. The marks are written by [`controller`], again whenever an
//! exception changes, expires or a run writes new findings.

pub mod controller;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use crate::api::exception::MAX_PATTERN_LEN;
use crate::api::{Finding, NucleiFindingException, Severity};
use crate::scan::status::chrono;

/// What an exception is at a moment.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// It suppresses what [`Rule`] matches, until the time given.
    Active(Rule, Option<DateTime<Utc>>),
    /// Its `spec.expires` has passed.
    Expired(DateTime<Utc>),
    /// It cannot be applied: why.
    Invalid(String),
}

impl State {
    /// The state of `ex` at `now`.
    pub fn of(ex: &NucleiFindingException, now: DateTime<Utc>) -> State {
        let spec = &ex.spec;
        let name = ex.name_any();
        if let Some(why) = ex.annotations().get(crate::cache::UNREADABLE) {
            return State::Invalid(format!("it cannot be read: {why}"));
        }
        if spec.reason.trim().is_empty() {
            return State::Invalid(
                "spec.reason is empty: say why the findings are accepted".into(),
            );
        }
        if spec.accepted_by.trim().is_empty() {
            return State::Invalid(
                "spec.acceptedBy is empty: say who accepted the findings".into(),
            );
        }
        let template_id = spec.template_id.trim();
        let target = spec.target.trim();
        if target.len() > MAX_PATTERN_LEN {
            return State::Invalid(format!(
                "spec.target is longer than {MAX_PATTERN_LEN} characters"
            ));
        }
        if template_id.is_empty() && target.chars().all(|c| c == '*') {
            return State::Invalid(
                "neither spec.templateId nor a spec.target other than `*` is set: it would \
                 accept every finding of the namespace"
                    .into(),
            );
        }
        let expires = spec.expires.as_ref().map(chrono);
        if let Some(at) = expires.filter(|at| *at <= now) {
            return State::Expired(at);
        }
        State::Active(
            Rule {
                name,
                template_id: template_id.to_owned(),
                target: target.to_ascii_lowercase(),
            },
            expires,
        )
    }
}

/// What one active exception accepts.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The exception's name.
    pub name: String,
    /// Template id; empty: any.
    template_id: String,
    /// Lowercase pattern; empty: anywhere.
    target: String,
}

impl Rule {
    /// Whether `f` is one of the findings this rule accepts: a target with
    /// a scheme (`https://…`) is matched against the finding's URLs, one
    /// without against their hosts only (so `*.example.com` never matches a
    /// URL on another host that merely mentions it).
    pub fn matches(&self, f: &Finding) -> bool {
        if !self.template_id.is_empty() && self.template_id != f.template_id {
            return false;
        }
        if self.target.is_empty() {
            return true;
        }
        let places = [&f.matched_at, &f.host].map(|s| s.to_ascii_lowercase());
        if crate::url::scheme_end(&self.target).is_some() {
            places
                .iter()
                .filter(|s| crate::url::scheme_end(s).is_some())
                .any(|s| glob(&self.target, s))
        } else {
            places
                .iter()
                .filter_map(|s| host_of(s))
                .any(|h| glob(&self.target, h))
        }
    }
}

/// The host of a URL or of `host[:port]`, without scheme, user, port, path
/// or the brackets of an IPv6 address.
fn host_of(s: &str) -> Option<&str> {
    Some(crate::url::parse(s).bare_host()).filter(|h| !h.is_empty())
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (none included) and everything else for itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is trying.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// The active rules of one namespace, by exception name (so a finding two
/// exceptions accept is marked with the same one every time).
#[derive(Clone, Debug, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// The rules of the active ones of `exceptions` at `now`.
    pub fn of<'a>(
        exceptions: impl IntoIterator<Item = &'a NucleiFindingException>,
        now: DateTime<Utc>,
    ) -> Rules {
        let mut rules: Vec<Rule> = exceptions
            .into_iter()
            .filter_map(|ex| match State::of(ex, now) {
                State::Active(rule, _) => Some(rule),
                _ => None,
            })
            .collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        Rules(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the exception that accepts `f`, if one does.
    pub fn accepting(&self, f: &Finding) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.matches(f))
            .map(|r| r.name.as_str())
    }
}

/// The marks [`mark`] set on a scan's findings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Marks {
    /// Whether any finding's `suppressedBy` changed.
    pub changed: bool,
    /// Suppressed findings per severity (all six names, as
    /// `summary.findingsBySeverity` has them).
    pub by_severity: BTreeMap<String, i64>,
    /// Suppressed findings per exception name.
    pub by_exception: BTreeMap<String, i64>,
}

impl Marks {
    pub fn total(&self) -> i64 {
        self.by_exception.values().sum()
    }
}

/// Sets each finding's `suppressedBy` to the exception of `rules` that
/// accepts it (clearing it where none does) and counts them.
pub fn mark(findings: &mut [Finding], rules: &Rules) -> Marks {
    let mut marks = Marks {
        by_severity: Severity::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect(),
        ..Marks::default()
    };
    for f in findings {
        let by = rules.accepting(f).unwrap_or_default().to_owned();
        if let Some(name) = (!by.is_empty()).then_some(&by) {
            let severity = f.severity.unwrap_or(Severity::Unknown).as_str();
            *marks.by_severity.entry(severity.to_owned()).or_default() += 1;
            *marks.by_exception.entry(name.clone()).or_default() += 1;
        }
        if f.suppressed_by != by {
            f.suppressed_by = by;
            marks.changed = true;
        }
    }
    marks
}

#[cfg(test)]
mod tests;
