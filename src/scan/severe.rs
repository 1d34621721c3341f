//! When a scan's source hears of its findings: a completed run that found
//! more critical and high findings than the completed run before it (users
//! look at their Ingress, not at the NucleiScan). "More" is by count: which
//! findings are new needs their fingerprints, not the counts.
//!
//! [`SevereRuns`] remembers, per scan uid, the last completed run seen and
//! its count. The first sight of a scan is its baseline: after a restart,
//! the runs that finished before are not announced again (nor one that
//! finished while no operator ran); a scan first seen without a completed
//! run has a baseline of 0, so its first run's findings are all new.

use std::collections::HashMap;

use kube::ResourceExt;

use crate::api::{NucleiScan, ScanSummary};
use crate::scan::status::chrono;

/// Most scans remembered; past it, every baseline starts again (at worst
/// one run unannounced per scan). Scans deleted are never removed
/// otherwise.
const MAX_REMEMBERED: usize = 100_000;

/// The last completed run seen of each scan.
#[derive(Debug, Default)]
pub struct SevereRuns {
    /// uid → (when the last completed run seen finished, its critical and
    /// high findings).
    last: HashMap<String, (Option<i64>, i64)>,
}

impl SevereRuns {
    /// Takes in a state of `scan`; the note of the Event its source should
    /// get, when this state shows a new completed run with more critical
    /// and high findings than the one before.
    pub fn observe(&mut self, scan: &NucleiScan) -> Option<String> {
        let uid = scan.uid()?;
        let status = scan.status.as_ref();
        let summary = status.and_then(|s| s.summary.as_ref());
        let run = status
            .and_then(|s| s.last_success())
            .filter(|_| summary.is_some())
            .map(|t| chrono(t).timestamp_millis());
        let now = summary.map_or(0, severe);
        if self.last.len() >= MAX_REMEMBERED && !self.last.contains_key(&uid) {
            self.last.clear();
        }
        // First sight: the baseline.
        let (seen, before) = self.last.insert(uid, (run, now))?;
        if run.is_none() || run == seen {
            return None;
        }
        // No completed run before this one: everything it found is new.
        let before = if seen.is_some() { before } else { 0 };
        note(scan, summary?, before)
    }
}

/// Critical plus high findings of `summary` (true totals).
fn severe(summary: &ScanSummary) -> i64 {
    ["critical", "high"]
        .iter()
        .map(|k| {
            summary
                .findings_by_severity
                .get(*k)
                .copied()
                .unwrap_or(0)
                .max(0)
        })
        .sum()
}

/// The Event's note, when `summary` has more critical and high findings
/// than `before`.
fn note(scan: &NucleiScan, summary: &ScanSummary, before: i64) -> Option<String> {
    let now = severe(summary);
    if now <= before {
        return None;
    }
    let count = |k: &str| summary.findings_by_severity.get(k).copied().unwrap_or(0);
    let more = if before > 0 {
        format!(" ({} more than the scan before)", now - before)
    } else {
        String::new()
    };
    Some(format!(
        "nuclei found {} critical and {} high findings{more}: kubectl describe nucleiscan {} -n {}",
        count("critical"),
        count("high"),
        scan.name_any(),
        scan.namespace().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NucleiScanStatus, ScanPhase};
    use crate::scan::status::time;

    fn scan(uid: &str, run: Option<(i64, [i64; 3])>, phase: ScanPhase) -> NucleiScan {
        let mut s = NucleiScan::new("shop-ingress", Default::default());
        s.metadata.namespace = Some("web".into());
        s.metadata.uid = Some(uid.into());
        s.status = Some(NucleiScanStatus {
            phase: Some(phase),
            summary: run.map(|(_, [critical, high, low])| ScanSummary {
                findings_by_severity: [("critical", critical), ("high", high), ("low", low)]
                    .map(|(k, n)| (k.to_string(), n))
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            last_success_time: run
                .map(|(at, _)| time(chrono::DateTime::from_timestamp(at, 0).unwrap())),
            ..Default::default()
        });
        s
    }

    const TAIL: &str = ": kubectl describe nucleiscan shop-ingress -n web";

    #[test]
    fn a_first_run_with_critical_or_high_findings_is_announced_once() {
        let mut runs = SevereRuns::default();
        assert_eq!(runs.observe(&scan("a", None, ScanPhase::Pending)), None);
        assert_eq!(runs.observe(&scan("a", None, ScanPhase::Running)), None);
        let done = scan("a", Some((100, [1, 2, 0])), ScanPhase::Completed);
        assert_eq!(
            runs.observe(&done).as_deref(),
            Some(&*format!(
                "nuclei found 1 critical and 2 high findings{TAIL}"
            ))
        );
        // Reconciles repeat.
        assert_eq!(runs.observe(&done), None);
    }

    #[test]
    fn a_later_run_is_announced_only_with_more_critical_and_high_findings() {
        let mut runs = SevereRuns::default();
        runs.observe(&scan("a", Some((100, [0, 1, 0])), ScanPhase::Completed));
        // The next run in progress still shows the last one: nothing new.
        assert_eq!(
            runs.observe(&scan("a", Some((100, [0, 1, 0])), ScanPhase::Running)),
            None
        );
        assert_eq!(
            runs.observe(&scan("a", Some((200, [1, 2, 0])), ScanPhase::Completed))
                .as_deref(),
            Some(&*format!(
                "nuclei found 1 critical and 2 high findings (2 more than the scan before){TAIL}"
            ))
        );
        // As many, fewer, or only low ones: nothing to tell.
        for (at, counts) in [(300, [1, 2, 0]), (400, [0, 1, 0]), (500, [0, 0, 9])] {
            assert_eq!(
                runs.observe(&scan("a", Some((at, counts)), ScanPhase::Completed)),
                None,
                "{at}"
            );
        }
        // A failed run keeps the last success: nothing new either.
        assert_eq!(
            runs.observe(&scan("a", Some((500, [0, 0, 9])), ScanPhase::Failed)),
            None
        );
    }

    #[test]
    fn the_first_sight_after_a_restart_is_a_baseline_and_a_new_uid_starts_over() {
        let mut runs = SevereRuns::default();
        // Completed before this process started: announced by the last one.
        assert_eq!(
            runs.observe(&scan("a", Some((100, [3, 0, 0])), ScanPhase::Completed)),
            None
        );
        // The same name, created again: its own first run.
        runs.observe(&scan("b", None, ScanPhase::Pending));
        assert!(
            runs.observe(&scan("b", Some((200, [1, 0, 0])), ScanPhase::Completed))
                .is_some()
        );
    }
}
