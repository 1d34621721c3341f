//! What changed since the last completed run: a stable fingerprint per
//! finding, and the run's new, unchanged and resolved counts against the
//! fingerprints of the previous completed run.
//!
//! A fingerprint hashes what identifies a finding (template id, matcher
//! name, host and matched-at, the URLs normalised), not what varies between
//! runs (timestamps, extracted values, descriptions), so the same finding
//! keeps it across runs. The status keeps the fingerprints of every finding
//! of the last completed run in `status.fingerprints` (not only those stored
//! in `status.findings`), so the counts stay true when the stored list was
//! cut; a run with more than [`MAX_FINGERPRINTS`] distinct findings keeps
//! none, and the next run's counts are then unknown (absent) rather than
//! wrong. Only a completed run writes them: a failed or cut-off run never
//! marks anything resolved.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Finding, NucleiScanStatus};

/// Hex digits of a fingerprint.
pub const FINGERPRINT_LEN: usize = 16;
/// Most distinct findings whose fingerprints a status keeps.
pub const MAX_FINGERPRINTS: usize = 6_000;
/// Most bytes `status.fingerprints` takes ([`MAX_FINGERPRINTS`] of
/// [`FINGERPRINT_LEN`] digits, plus its JSON quotes).
pub const MAX_FINGERPRINT_BYTES: usize = MAX_FINGERPRINTS * FINGERPRINT_LEN + 2;

/// The fingerprint of `f`: 16 hex digits, the same for the same finding in
/// every run.
pub fn fingerprint(f: &Finding) -> String {
    let key = [
        f.template_id.trim(),
        f.matcher_name.trim(),
        &normalise_url(&f.host),
        &normalise_url(&f.matched_at),
    ]
    .join("\0");
    crate::hash::fnv1a_64_hex(key.as_bytes())
}

/// `s` with its scheme and host in lower case, without the scheme's default
/// port, a fragment or a lone trailing slash: spellings nuclei may vary for
/// the same place. Anything that is not `scheme://…` only loses its case.
fn normalise_url(s: &str) -> String {
    let s = s.trim();
    let s = s.split_once('#').map_or(s, |(before, _)| before);
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_ascii_lowercase();
    };
    let scheme = scheme.to_ascii_lowercase();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut authority = authority.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    if let Some(port) = default
        && authority.ends_with(port)
    {
        authority.truncate(authority.len() - port.len());
    }
    let tail = if tail == "/" { "" } else { tail };
    format!("{scheme}://{authority}{tail}")
}

/// The previous completed run, as far as the next run compares with it.
#[derive(Debug)]
pub enum Previous {
    /// No run completed before: every finding is new.
    None,
    /// The fingerprints of every finding of the previous completed run.
    Known(HashSet<u64>),
    /// A run completed, but its fingerprints were not kept (too many, or
    /// written before fingerprints existed with a cut findings list).
    Unknown,
}

impl Previous {
    /// What `status` says about its last completed run.
    pub fn of(status: Option<&NucleiScanStatus>) -> Previous {
        let Some(status) = status else {
            return Previous::None;
        };
        if let Some(prints) = &status.fingerprints {
            return decode(prints).map_or(Previous::Unknown, Previous::Known);
        }
        match &status.summary {
            None => Previous::None,
            // Before fingerprints, a whole stored list still says it.
            Some(s) if !s.findings_truncated => Previous::Known(
                status
                    .findings
                    .iter()
                    .filter_map(|f| parse(&fingerprint(f)))
                    .collect(),
            ),
            Some(_) => Previous::Unknown,
        }
    }
}

fn parse(hex: &str) -> Option<u64> {
    (hex.len() == FINGERPRINT_LEN)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// `status.fingerprints` read back; `None` if it is not a list of them.
fn decode(s: &str) -> Option<HashSet<u64>> {
    if !s.len().is_multiple_of(FINGERPRINT_LEN) || !s.is_ascii() {
        return None;
    }
    s.as_bytes()
        .chunks(FINGERPRINT_LEN)
        .map(|c| parse(std::str::from_utf8(c).ok()?))
        .collect()
}

/// A run's counts against the previous completed run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub new: i64,
    pub unchanged: i64,
    pub resolved: i64,
}

/// Follows a run's findings as they stream in: the distinct fingerprints
/// (up to [`MAX_FINGERPRINTS`]) and how many of them the previous run had.
#[derive(Debug)]
pub struct Changes {
    previous: Previous,
    seen: HashSet<u64>,
    overflow: bool,
    unchanged: i64,
}

impl Changes {
    pub fn new(previous: Previous) -> Self {
        Changes {
            previous,
            seen: HashSet::new(),
            overflow: false,
            unchanged: 0,
        }
    }

    /// What this run compares with.
    pub fn previous(&self) -> &Previous {
        &self.previous
    }

    /// Notes a finding of this run by its fingerprint (each distinct one
    /// counts once).
    pub fn see(&mut self, print: &str) {
        let Some(p) = parse(print) else { return };
        if self.overflow || self.seen.contains(&p) {
            return;
        }
        if self.seen.len() == MAX_FINGERPRINTS {
            self.overflow = true;
            self.seen = HashSet::new();
            return;
        }
        self.seen.insert(p);
        if let Previous::Known(before) = &self.previous
            && before.contains(&p)
        {
            self.unchanged += 1;
        }
    }

    /// The counts (`None` when they cannot be known) and
    /// `status.fingerprints` for the next run (`None`: not kept).
    pub fn finish(self) -> (Option<Counts>, Option<String>) {
        if self.overflow {
            return (None, None);
        }
        let seen = self.seen.len() as i64;
        let counts = match &self.previous {
            Previous::None => Some(Counts {
                new: seen,
                ..Counts::default()
            }),
            Previous::Known(before) => Some(Counts {
                new: seen - self.unchanged,
                unchanged: self.unchanged,
                resolved: before.len() as i64 - self.unchanged,
            }),
            Previous::Unknown => None,
        };
        let mut sorted: Vec<u64> = self.seen.into_iter().collect();
        sorted.sort_unstable();
        let prints = sorted.iter().map(|p| format!("{p:016x}")).collect();
        (counts, Some(prints))
    }
}

/// Sets `firstSeen` on this run's stored findings: kept from the previous
/// run's stored finding with the same fingerprint; for one the previous run
/// counted but did not store, the previous run's success (it was seen by
/// then); otherwise this sighting (nuclei's timestamp, else `now`).
pub fn first_seen(
    findings: &mut [Finding],
    status: Option<&NucleiScanStatus>,
    previous: &Previous,
    now: Time,
) {
    let before: HashMap<String, Option<Time>> = status
        .map(|s| {
            s.findings
                .iter()
                .map(|f| {
                    let print = if f.fingerprint.is_empty() {
                        fingerprint(f)
                    } else {
                        f.fingerprint.clone()
                    };
                    (print, f.first_seen.clone().or_else(|| f.timestamp.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    let last_success = status.and_then(|s| s.last_success_time.clone());
    for f in findings {
        let counted = match previous {
            Previous::Known(set) => parse(&f.fingerprint).is_some_and(|p| set.contains(&p)),
            _ => false,
        };
        f.first_seen = match before.get(&f.fingerprint) {
            Some(Some(t)) => Some(t.clone()),
            _ if counted => last_success.clone(),
            _ => None,
        }
        .or_else(|| f.timestamp.clone())
        .or_else(|| Some(now.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ScanSummary;

    fn finding(id: &str, at: &str) -> Finding {
        let mut f = Finding {
            template_id: id.into(),
            host: "http://app.test".into(),
            matched_at: at.into(),
            ..Finding::default()
        };
        f.fingerprint = fingerprint(&f);
        f
    }

    fn t(secs: i64) -> Time {
        crate::scan::status::time(chrono::DateTime::from_timestamp(secs, 0).unwrap())
    }

    #[test]
    fn a_fingerprint_ignores_what_varies_between_runs_and_names_what_identifies() {
        let base = finding("canary", "http://app.test/canary");
        let mut later = base.clone();
        later.timestamp = Some(t(99));
        later.extracted_results = vec!["v2".into()];
        later.description = "reworded".into();
        later.template_name = "Renamed".into();
        later.host = "HTTP://App.Test:80/".into();
        later.matched_at = "http://APP.test:80/canary#top".into();
        assert_eq!(fingerprint(&later), base.fingerprint);
        assert_eq!(base.fingerprint.len(), FINGERPRINT_LEN);
        // What makes it another finding changes it.
        for other in [
            Finding {
                template_id: "other".into(),
                ..base.clone()
            },
            Finding {
                matcher_name: "header".into(),
                ..base.clone()
            },
            Finding {
                matched_at: "http://app.test/canary?x=1".into(),
                ..base.clone()
            },
            Finding {
                matched_at: "https://app.test/canary".into(),
                ..base.clone()
            },
            Finding {
                host: "http://app.test:8080".into(),
                ..base.clone()
            },
        ] {
            assert_ne!(fingerprint(&other), base.fingerprint, "{other:?}");
        }
        // The path's case is the server's business: kept.
        assert_ne!(
            fingerprint(&finding("canary", "http://app.test/Canary")),
            base.fingerprint
        );
    }

    fn changes(previous: Previous, prints: &[&Finding]) -> (Option<Counts>, Option<String>) {
        let mut c = Changes::new(previous);
        for f in prints {
            c.see(&f.fingerprint);
        }
        c.finish()
    }

    #[test]
    fn counts_compare_distinct_findings_with_the_previous_run() {
        let (a, b, c) = (
            finding("a", "http://app.test/a"),
            finding("b", "http://app.test/b"),
            finding("c", "http://app.test/c"),
        );
        // First run: all new, each distinct finding once.
        let (counts, prints) = changes(Previous::None, &[&a, &b, &b]);
        assert_eq!(
            counts,
            Some(Counts {
                new: 2,
                unchanged: 0,
                resolved: 0
            })
        );
        let prints = prints.unwrap();
        assert_eq!(prints.len(), 2 * FINGERPRINT_LEN);
        // Next run: b stays, a is gone, c is new.
        let status = NucleiScanStatus {
            fingerprints: Some(prints),
            summary: Some(ScanSummary::default()),
            ..Default::default()
        };
        let (counts, prints) = changes(Previous::of(Some(&status)), &[&c, &b]);
        assert_eq!(
            counts,
            Some(Counts {
                new: 1,
                unchanged: 1,
                resolved: 1
            })
        );
        // And the set written is this run's, sorted, whatever the order seen.
        let (_, again) = changes(Previous::None, &[&b, &c]);
        assert_eq!(prints, again);
    }

    #[test]
    fn without_kept_fingerprints_a_whole_stored_list_still_compares_and_a_cut_one_does_not() {
        let (a, b) = (
            finding("a", "http://app.test/a"),
            finding("b", "http://app.test/b"),
        );
        let mut old = [a.clone(), b.clone()];
        // Written by 0.4.0: no fingerprint fields at all.
        for f in &mut old {
            f.fingerprint.clear();
        }
        let mut status = NucleiScanStatus {
            findings: old.to_vec(),
            summary: Some(ScanSummary::default()),
            ..Default::default()
        };
        let (counts, _) = changes(Previous::of(Some(&status)), &[&b]);
        assert_eq!(
            counts,
            Some(Counts {
                new: 0,
                unchanged: 1,
                resolved: 1
            })
        );
        status.summary.as_mut().unwrap().findings_truncated = true;
        let (counts, prints) = changes(Previous::of(Some(&status)), &[&b]);
        assert_eq!(counts, None, "a cut list cannot say what was resolved");
        assert!(prints.is_some(), "the next run can compare again");
        // A garbled set is unknown too, never a reason to call all new.
        status.fingerprints = Some("not-hex".into());
        assert!(matches!(Previous::of(Some(&status)), Previous::Unknown));
        // No run completed yet: nothing to compare with.
        assert!(matches!(
            Previous::of(Some(&NucleiScanStatus::default())),
            Previous::None
        ));
    }

    #[test]
    fn too_many_distinct_findings_keep_no_set_and_give_no_counts() {
        let mut c = Changes::new(Previous::None);
        for i in 0..=MAX_FINGERPRINTS {
            c.see(&format!("{i:016x}"));
        }
        assert_eq!(c.finish(), (None, None));
        let mut c = Changes::new(Previous::None);
        for i in 0..MAX_FINGERPRINTS {
            c.see(&format!("{i:016x}"));
        }
        let (counts, prints) = c.finish();
        assert_eq!(counts.unwrap().new, MAX_FINGERPRINTS as i64);
        assert_eq!(prints.unwrap().len() + 2, MAX_FINGERPRINT_BYTES);
    }

    #[test]
    fn first_seen_is_kept_across_runs_and_set_for_new_findings() {
        let mut a = finding("a", "http://app.test/a");
        a.first_seen = Some(t(100));
        let b = finding("b", "http://app.test/b");
        let status = NucleiScanStatus {
            findings: vec![a.clone()],
            // b was counted but not stored (the list was cut).
            fingerprints: Some({
                let mut v = [a.fingerprint.clone(), b.fingerprint.clone()];
                v.sort();
                v.concat()
            }),
            summary: Some(ScanSummary {
                findings_truncated: true,
                ..Default::default()
            }),
            last_success_time: Some(t(200)),
            ..Default::default()
        };
        let previous = Previous::of(Some(&status));
        let mut c = finding("c", "http://app.test/c");
        c.timestamp = Some(t(290));
        let mut run = vec![a.clone(), b.clone(), c, finding("d", "http://app.test/d")];
        for f in &mut run {
            f.first_seen = None;
        }
        first_seen(&mut run, Some(&status), &previous, t(300));
        let seen: Vec<Option<Time>> = run.into_iter().map(|f| f.first_seen).collect();
        assert_eq!(
            seen,
            [Some(t(100)), Some(t(200)), Some(t(290)), Some(t(300))]
        );
    }

    proptest::proptest! {
        /// Across two runs from a small pool (so they overlap and repeat),
        /// the counts are the set differences of the distinct findings.
        #[test]
        fn counts_are_the_set_differences_of_two_runs(
            before in proptest::collection::vec(0u64..40, 0..60),
            after in proptest::collection::vec(0u64..40, 0..60),
        ) {
            let hex = |v: &[u64]| -> Vec<String> { v.iter().map(|p| format!("{p:016x}")).collect() };
            let mut first = Changes::new(Previous::None);
            hex(&before).iter().for_each(|p| first.see(p));
            let (_, prints) = first.finish();
            let status = NucleiScanStatus {
                fingerprints: prints,
                summary: Some(ScanSummary::default()),
                ..Default::default()
            };
            let mut second = Changes::new(Previous::of(Some(&status)));
            hex(&after).iter().for_each(|p| second.see(p));
            let (counts, _) = second.finish();
            let b: HashSet<u64> = before.into_iter().collect();
            let a: HashSet<u64> = after.into_iter().collect();
            let want = Counts {
                new: a.difference(&b).count() as i64,
                unchanged: a.intersection(&b).count() as i64,
                resolved: b.difference(&a).count() as i64,
            };
            proptest::prop_assert_eq!(counts, Some(want));
        }
    }
}
