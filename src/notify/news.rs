//! What a completed run has to tell: the findings it found for the first
//! time, and how many it resolved. Read from the scan's status alone, so a
//! restarted operator reads the same news as the one before it.

use chrono::{DateTime, Utc};

use crate::api::{Finding, NucleiScan, ScanPhase, Severity};
use crate::scan::status::chrono;

/// The news of a scan's last completed run.
#[derive(Clone, Debug, PartialEq)]
pub struct News {
    /// When the run finished (`status.lastSuccessTime`): names the run.
    pub run: DateTime<Utc>,
    /// Its new findings stored in the status, most severe first (the
    /// status stores the most severe first, so a cut list loses the least
    /// severe).
    pub new: Vec<Finding>,
    /// True counts against the run before (`status.summary`).
    pub new_total: i64,
    pub resolved: i64,
    pub unchanged: i64,
}

impl News {
    /// The news of `scan`'s last run, when it completed and its counts are
    /// known (a run after more than 6,000 distinct findings has none). A
    /// failed run, or a completed one followed by a failed one, has none: a
    /// failed run resolves nothing and its news would be stale.
    pub fn of(scan: &NucleiScan) -> Option<News> {
        let status = scan.status.as_ref()?;
        if status.phase != Some(ScanPhase::Completed) {
            return None;
        }
        let run = chrono(status.last_success_time.as_ref()?);
        let summary = status.summary.as_ref()?;
        let started = status.scan_start_time.as_ref().map(chrono)?;
        // A finding is new when this run first saw it: its firstSeen is
        // this run's sighting, not an earlier run's (which ended before
        // this one started).
        let new = status
            .findings
            .iter()
            .filter(|f| f.first_seen.as_ref().is_some_and(|t| chrono(t) >= started))
            .cloned()
            .collect();
        Some(News {
            run,
            new,
            new_total: summary.new_findings?,
            resolved: summary.resolved_findings.unwrap_or(0),
            unchanged: summary.unchanged_findings.unwrap_or(0),
        })
    }

    /// When the run `status` shows finished, if it may have news to tell
    /// (new or resolved findings); read from a scan whose findings the
    /// cache dropped, to decide whether the whole scan is worth fetching.
    pub fn worth_reading(scan: &NucleiScan) -> Option<DateTime<Utc>> {
        let status = scan.status.as_ref()?;
        let summary = status.summary.as_ref()?;
        let news = summary.new_findings? > 0 || summary.resolved_findings.unwrap_or(0) > 0;
        (status.phase == Some(ScanPhase::Completed) && news)
            .then_some(status.last_success_time.as_ref().map(chrono)?)
    }

    /// The news without the new findings an exception accepts: they are
    /// not news while it is active.
    pub fn without_accepted(mut self, rules: &crate::suppress::Rules) -> News {
        let before = self.new.len();
        self.new.retain(|f| rules.accepting(f).is_none());
        self.new_total = (self.new_total - (before - self.new.len()) as i64).max(0);
        self
    }

    /// The stored new findings at `min` or more severe (a finding without
    /// a severity counts as unknown).
    pub fn at_least(&self, min: Severity) -> impl Iterator<Item = &Finding> {
        self.new
            .iter()
            .filter(move |f| f.severity.unwrap_or(Severity::Unknown) <= min)
    }

    /// "1 critical, 2 high": counts of `findings` by severity, most severe
    /// first, naming only the severities that occur.
    pub fn by_severity<'a>(findings: impl Iterator<Item = &'a Finding>) -> String {
        let mut counts = [0usize; Severity::ALL.len()];
        for f in findings {
            let s = f.severity.unwrap_or(Severity::Unknown);
            counts[Severity::ALL.iter().position(|x| *x == s).unwrap_or(0)] += 1;
        }
        Severity::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{n} {}", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The note of the `NewFindings` Event, when the run found new findings
    /// at `min` or more severe.
    pub fn event_note(&self, scan: &NucleiScan, min: Severity) -> Option<String> {
        let n = self.at_least(min).count();
        if n == 0 {
            return None;
        }
        Some(format!(
            "{} ({}) in the last scan: kubectl describe nucleiscan {} -n {}",
            plural(n, "new finding"),
            News::by_severity(self.at_least(min)),
            kube::ResourceExt::name_any(scan),
            kube::ResourceExt::namespace(scan).unwrap_or_default()
        ))
    }
}

/// "1 new finding", "2 new findings".
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{NucleiScanStatus, ScanSummary};
    use crate::scan::status::time;

    pub fn at(s: i64) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        time(DateTime::from_timestamp(s, 0).unwrap())
    }

    pub fn finding(id: &str, severity: Severity, first_seen: i64) -> Finding {
        Finding {
            template_id: id.into(),
            template_name: format!("{id} name"),
            severity: Some(severity),
            host: "shop.test".into(),
            matched_at: format!("https://shop.test/{id}"),
            fingerprint: format!("{:016x}", id.len()),
            first_seen: Some(at(first_seen)),
            ..Default::default()
        }
    }

    /// A scan whose last run started at 1000 and finished at 1010, with
    /// `findings` and the counts (new, unchanged, resolved).
    pub fn scan(findings: Vec<Finding>, counts: (i64, i64, i64)) -> NucleiScan {
        let mut s = NucleiScan::new("shop-ingress", Default::default());
        s.metadata.namespace = Some("web".into());
        s.metadata.uid = Some("u1".into());
        s.status = Some(NucleiScanStatus {
            phase: Some(ScanPhase::Completed),
            findings,
            summary: Some(ScanSummary {
                new_findings: Some(counts.0),
                unchanged_findings: Some(counts.1),
                resolved_findings: Some(counts.2),
                ..Default::default()
            }),
            scan_start_time: Some(at(1000)),
            last_success_time: Some(at(1010)),
            ..Default::default()
        });
        s
    }

    #[test]
    fn new_findings_are_those_first_seen_in_this_run() {
        let s = scan(
            vec![
                finding("crit", Severity::Critical, 1003),
                finding("old-high", Severity::High, 500),
                finding("high", Severity::High, 1000),
                finding("low", Severity::Low, 1004),
            ],
            (3, 1, 2),
        );
        assert_eq!(News::worth_reading(&s), Some(chrono(&at(1010))));
        let news = News::of(&s).unwrap();
        let ids: Vec<&str> = news.new.iter().map(|f| f.template_id.as_str()).collect();
        assert_eq!(ids, ["crit", "high", "low"]);
        assert_eq!((news.new_total, news.unchanged, news.resolved), (3, 1, 2));
        assert_eq!(news.run, chrono(&at(1010)));
        assert_eq!(news.at_least(Severity::High).count(), 2);
        assert_eq!(
            News::by_severity(news.at_least(Severity::Info)),
            "1 critical, 1 high, 1 low"
        );
        assert_eq!(
            news.event_note(&s, Severity::High).as_deref(),
            Some(
                "2 new findings (1 critical, 1 high) in the last scan: \
                 kubectl describe nucleiscan shop-ingress -n web"
            )
        );
        // Only old or low ones: no Event.
        assert_eq!(
            news.event_note(&s, Severity::Critical)
                .as_deref()
                .map(|n| &n[..13]),
            Some("1 new finding")
        );
        let quiet = scan(vec![finding("old-high", Severity::High, 500)], (0, 1, 0));
        assert_eq!(
            News::of(&quiet).unwrap().event_note(&quiet, Severity::Info),
            None
        );
    }

    #[test]
    fn a_run_that_failed_or_without_counts_has_no_news() {
        let mut s = scan(vec![finding("crit", Severity::Critical, 1003)], (1, 0, 0));
        s.status.as_mut().unwrap().phase = Some(ScanPhase::Failed);
        assert_eq!(News::of(&s), None);
        assert_eq!(News::worth_reading(&s), None);
        s.status.as_mut().unwrap().phase = Some(ScanPhase::Running);
        assert_eq!(News::of(&s), None);
        let mut s = scan(vec![finding("crit", Severity::Critical, 1003)], (1, 0, 0));
        s.status
            .as_mut()
            .unwrap()
            .summary
            .as_mut()
            .unwrap()
            .new_findings = None;
        assert_eq!(News::of(&s), None);
        s.status = None;
        assert_eq!(News::of(&s), None);
    }
}
