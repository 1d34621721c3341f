//! The findings of one scan, kept under a byte budget for the NucleiScan status.
//!
//! etcd refuses objects over ~1.5 MiB, and the Go operator broke its status
//! update on large scans by storing every finding. [`Report`] counts every
//! finding it is given but stores only what fits in a byte budget for the
//! serialized `status.findings` list (512 KiB by default), most severe first.
//! It decides as findings stream in, so memory stays flat however many nuclei
//! reports.
//!
//! Which findings are kept: sort everything nuclei reported by (severity,
//! template id, matched-at, host, matcher name); the report keeps the longest
//! prefix of that order that fits the budget. The result therefore does not
//! depend on the order nuclei printed its results in. A finding that on its own
//! is larger than the whole budget is dropped without affecting the others.
//!
//! Before a finding is measured, any absurdly long field is cut (4 KiB per
//! string, 8 KiB per list by default) with a visible marker, so one finding
//! cannot eat the budget.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use crate::api::{Finding, Severity};

/// Default byte budget for the serialized findings list: 512 KiB.
pub const DEFAULT_BUDGET_BYTES: usize = 512 * 1024;

/// Default cap on one string field of a finding: 4 KiB.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 4 * 1024;

/// Default cap on the total of one list field (extracted results, references,
/// tags, CVE/CWE ids) of a finding: 8 KiB.
pub const DEFAULT_MAX_LIST_BYTES: usize = 8 * 1024;

/// Limits of a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportLimits {
    /// Most bytes the findings list may take when serialized as a JSON array.
    pub budget_bytes: usize,
    /// Longest string field; a longer one is cut and marked.
    pub max_field_bytes: usize,
    /// Most bytes of items in one list field; further items are replaced by
    /// one marker item.
    pub max_list_bytes: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self {
            budget_bytes: DEFAULT_BUDGET_BYTES,
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            max_list_bytes: DEFAULT_MAX_LIST_BYTES,
        }
    }
}

/// Accumulates a scan's findings: true totals of everything, storage of the
/// most severe that fit the budget.
#[derive(Debug, Default)]
pub struct Report {
    limits: ReportLimits,
    // Max-heap: the top is the least important stored finding, next to go.
    kept: BinaryHeap<Entry>,
    // Sum over kept entries of (serialized size + 1 for the separating comma).
    kept_cost: usize,
    // The most important finding ever evicted: nothing that sorts at or after
    // it may be stored any more, which keeps the stored set a prefix.
    watermark: Option<Finding>,
    total: i64,
    by_severity: [i64; Severity::ALL.len()],
}

impl Report {
    /// An empty report with the given limits.
    pub fn new(limits: ReportLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Adds one finding: always counted, stored if it fits.
    pub fn push(&mut self, mut finding: Finding) {
        self.total += 1;
        self.by_severity[severity_index(finding.severity)] += 1;

        if let Some(mark) = &self.watermark
            && order(&finding, mark) != Ordering::Less
        {
            return;
        }
        clamp_finding(
            &mut finding,
            self.limits.max_field_bytes,
            self.limits.max_list_bytes,
        );
        let cost = serialized_len(&finding) + 1;
        if 1 + cost > self.limits.budget_bytes {
            // Alone bigger than the whole budget: drop it, but do not let it
            // push the watermark up and starve everything after it.
            return;
        }
        self.kept.push(Entry { finding, cost });
        self.kept_cost += cost;
        while 1 + self.kept_cost > self.limits.budget_bytes {
            let Some(evicted) = self.pop() else { break };
            // Drop the evicted finding's exact ties too, so the stored set is
            // exactly "everything that sorts before the watermark".
            while self
                .kept
                .peek()
                .is_some_and(|top| order(&top.finding, &evicted) == Ordering::Equal)
            {
                self.pop();
            }
            self.watermark = Some(evicted);
        }
    }

    fn pop(&mut self) -> Option<Finding> {
        let entry = self.kept.pop()?;
        self.kept_cost -= entry.cost;
        Some(entry.finding)
    }

    /// The stored findings, most severe first; within a severity by template
    /// id, then matched-at, then host, then matcher name.
    pub fn findings(&self) -> Vec<Finding> {
        let mut entries: Vec<&Entry> = self.kept.iter().collect();
        entries.sort();
        entries.into_iter().map(|e| e.finding.clone()).collect()
    }

    /// [`Report::findings`], consuming the report.
    pub fn into_findings(self) -> Vec<Finding> {
        self.kept
            .into_sorted_vec()
            .into_iter()
            .map(|e| e.finding)
            .collect()
    }

    /// How many findings were pushed, stored or not.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Findings pushed per severity name, stored or not. Always has all six
    /// keys (`critical`, `high`, `medium`, `low`, `info`, `unknown`), zeros
    /// included, so `.findingsBySeverity.critical` reads 0 rather than
    /// nothing. A finding without a severity counts as `unknown`.
    pub fn by_severity(&self) -> BTreeMap<String, i64> {
        Severity::ALL
            .iter()
            .zip(self.by_severity)
            .map(|(s, n)| (s.as_str().to_owned(), n))
            .collect()
    }

    /// True when fewer findings are stored than were pushed.
    pub fn truncated(&self) -> bool {
        (self.kept.len() as i64) < self.total
    }

    /// How many findings are stored.
    pub fn stored(&self) -> usize {
        self.kept.len()
    }

    /// Size in bytes of the stored findings serialized as a JSON array; never
    /// more than the budget.
    pub fn stored_bytes(&self) -> usize {
        if self.kept.is_empty() {
            2
        } else {
            1 + self.kept_cost
        }
    }
}

impl Extend<Finding> for Report {
    fn extend<I: IntoIterator<Item = Finding>>(&mut self, iter: I) {
        for finding in iter {
            self.push(finding);
        }
    }
}

/// Cuts over-long fields of `finding` in place: each string field to
/// `max_field_bytes`, and each list to about `max_list_bytes` of items (each
/// item also cut to `max_field_bytes`). A cut string ends in
/// `…[truncated N bytes]`; a cut list ends in one `…[N more truncated]` item.
/// Returns whether anything was cut.
pub fn clamp_finding(finding: &mut Finding, max_field_bytes: usize, max_list_bytes: usize) -> bool {
    let mut cut = false;
    for s in [
        &mut finding.template_id,
        &mut finding.template_name,
        &mut finding.kind,
        &mut finding.host,
        &mut finding.matched_at,
        &mut finding.matcher_name,
        &mut finding.description,
    ] {
        cut |= clamp_str(s, max_field_bytes);
    }
    for list in [
        &mut finding.extracted_results,
        &mut finding.reference,
        &mut finding.tags,
        &mut finding.cve_ids,
        &mut finding.cwe_ids,
    ] {
        cut |= clamp_list(list, max_field_bytes, max_list_bytes);
    }
    cut
}

fn clamp_str(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let removed = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("…[truncated {removed} bytes]"));
    true
}

fn clamp_list(list: &mut Vec<String>, max_item: usize, max_total: usize) -> bool {
    let mut cut = false;
    let mut used = 0;
    for (i, item) in list.iter_mut().enumerate() {
        cut |= clamp_str(item, max_item);
        used += item.len();
        // Always keep the first item, clamped, so a list never shows only a marker.
        if used > max_total && i > 0 {
            let more = list.len() - i;
            list.truncate(i);
            list.push(format!("…[{more} more truncated]"));
            return true;
        }
    }
    cut
}

fn severity_index(severity: Option<Severity>) -> usize {
    let s = severity.unwrap_or(Severity::Unknown);
    Severity::ALL
        .iter()
        .position(|x| *x == s)
        .unwrap_or(Severity::ALL.len() - 1)
}

// The storage order: most severe first, then a stable tie-break.
fn order(a: &Finding, b: &Finding) -> Ordering {
    severity_index(a.severity)
        .cmp(&severity_index(b.severity))
        .then_with(|| a.template_id.cmp(&b.template_id))
        .then_with(|| a.matched_at.cmp(&b.matched_at))
        .then_with(|| a.host.cmp(&b.host))
        .then_with(|| a.matcher_name.cmp(&b.matcher_name))
}

fn serialized_len(finding: &Finding) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, finding) {
        Ok(()) => count.0,
        // Unserializable means unstorable: make it "bigger than any budget".
        Err(_) => usize::MAX / 2,
    }
}

#[derive(Debug)]
struct Entry {
    finding: Finding,
    cost: usize,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        order(&self.finding, &other.finding)
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(i: usize, severity: Severity) -> Finding {
        Finding {
            template_id: format!("tpl-{:03}", i % 97),
            template_name: format!("Template number {}", i % 97),
            severity: Some(severity),
            kind: "http".into(),
            host: format!("https://app-{}.example.com", i % 13),
            matched_at: format!("https://app-{}.example.com/path/{i}", i % 13),
            description:
                "A realistic description of what the template checks, about one line long.".into(),
            tags: vec!["exposure".into(), "config".into()],
            reference: vec!["https://example.com/advisory".into()],
            ..Finding::default()
        }
    }

    fn mixed(n: usize) -> Vec<Finding> {
        (0..n)
            .map(|i| finding(i, Severity::ALL[(i * 7 + i / 5) % Severity::ALL.len()]))
            .collect()
    }

    fn json_len(findings: &[Finding]) -> usize {
        serde_json::to_vec(findings).unwrap().len()
    }

    #[test]
    fn the_budget_is_respected_with_thousands_of_findings() {
        let all = mixed(20_000);
        let mut report = Report::default();
        report.extend(all.clone());
        let stored = report.findings();
        assert!(
            json_len(&all) > 4 * DEFAULT_BUDGET_BYTES,
            "the input is well over budget"
        );
        assert_eq!(json_len(&stored), report.stored_bytes());
        assert!(report.stored_bytes() <= DEFAULT_BUDGET_BYTES);
        // Nearly full: the gap is less than one more finding.
        assert!(DEFAULT_BUDGET_BYTES - report.stored_bytes() < 400);
        assert!(report.truncated());
        assert_eq!(report.stored(), stored.len());
        assert!(report.stored() > 1000);
    }

    #[test]
    fn true_totals_count_every_finding_stored_or_not() {
        let all = mixed(10_000);
        let mut report = Report::new(ReportLimits {
            budget_bytes: 10_000,
            ..ReportLimits::default()
        });
        report.extend(all.iter().cloned());
        report.push(Finding {
            template_id: "no-severity".into(),
            ..Finding::default()
        });
        assert_eq!(report.total(), 10_001);
        let by = report.by_severity();
        assert_eq!(by.values().sum::<i64>(), 10_001);
        for s in Severity::ALL {
            let want = all.iter().filter(|f| f.severity == Some(s)).count() as i64
                + i64::from(s == Severity::Unknown);
            assert_eq!(by[s.as_str()], want, "{s}");
        }
        assert!(report.stored() < 100);
    }

    #[test]
    fn by_severity_always_has_all_six_keys() {
        let mut report = Report::default();
        report.push(finding(1, Severity::High));
        let by = report.by_severity();
        assert_eq!(
            by.keys().map(String::as_str).collect::<Vec<_>>(),
            ["critical", "high", "info", "low", "medium", "unknown"]
        );
        assert_eq!((by["high"], by["critical"]), (1, 0));
        assert!(!report.truncated());
    }

    #[test]
    fn findings_come_most_severe_first_then_by_template_id_and_matched_at() {
        let mut report = Report::default();
        let mk = |id: &str, at: &str, s| Finding {
            template_id: id.into(),
            matched_at: at.into(),
            severity: Some(s),
            ..Finding::default()
        };
        report.push(mk("b", "https://x/2", Severity::Low));
        report.push(mk("a", "https://x/9", Severity::Info));
        report.push(mk("b", "https://x/1", Severity::Low));
        report.push(mk("z", "https://x/1", Severity::Critical));
        report.push(mk("a", "https://x/1", Severity::Low));
        report.push(Finding {
            severity: None,
            ..mk("0", "", Severity::Info)
        });
        let got: Vec<_> = report
            .findings()
            .iter()
            .map(|f| format!("{}:{}", f.template_id, f.matched_at))
            .collect();
        assert_eq!(
            got,
            [
                "z:https://x/1",
                "a:https://x/1",
                "b:https://x/1",
                "b:https://x/2",
                "a:https://x/9",
                "0:"
            ]
        );
        assert_eq!(report.findings(), report.into_findings());
    }

    #[test]
    fn the_stored_set_is_the_longest_fitting_prefix_whatever_the_input_order() {
        let all = mixed(3_000);
        let limits = ReportLimits {
            budget_bytes: 60_000,
            ..ReportLimits::default()
        };
        let mut forward = Report::new(limits.clone());
        forward.extend(all.iter().cloned());
        let mut backward = Report::new(limits.clone());
        backward.extend(all.iter().rev().cloned());
        let mut interleaved = Report::new(limits);
        interleaved.extend(
            all.iter()
                .step_by(2)
                .chain(all.iter().skip(1).step_by(2))
                .cloned(),
        );

        let mut sorted = all.clone();
        sorted.sort_by(order);
        let mut want = Vec::new();
        for f in sorted {
            want.push(f);
            if json_len(&want) > 60_000 {
                want.pop();
                break;
            }
        }
        // Ties (same severity/template/matched-at/host/matcher) are kept or
        // dropped together; this fixture has none at the cut.
        assert_eq!(forward.findings(), want);
        assert_eq!(backward.findings(), want);
        assert_eq!(interleaved.findings(), want);
        let worst_kept = want.last().unwrap().severity;
        assert!(forward.findings().iter().all(|f| f.severity <= worst_kept));
    }

    #[test]
    fn a_single_huge_finding_is_cut_to_size_and_kept() {
        let mut huge = finding(1, Severity::Critical);
        huge.description = "é".repeat(600_000); // 1.2 MB, two bytes a char
        huge.extracted_results = (0..1_000)
            .map(|i| format!("{i}:{}", "v".repeat(10_000)))
            .collect();
        huge.matched_at = format!("https://x/?q={}", "A".repeat(50_000));
        let mut report = Report::default();
        report.push(huge);
        report.push(finding(2, Severity::Low));
        assert_eq!(report.stored(), 2);
        assert!(!report.truncated());
        let kept = &report.findings()[0];
        assert!(
            report.stored_bytes() < 32 * 1024,
            "{}",
            report.stored_bytes()
        );
        assert!(kept.description.starts_with("éé"));
        assert!(
            kept.description.ends_with("…[truncated 1195904 bytes]"),
            "{}",
            &kept.description[4000..]
        );
        assert!(kept.description.len() < DEFAULT_MAX_FIELD_BYTES + 40);
        assert!(kept.matched_at.contains("…[truncated "));
        // One cut item (~4 KiB) fits the 8 KiB list cap, a second would not.
        assert_eq!(kept.extracted_results.len(), 2);
        assert!(kept.extracted_results[0].starts_with("0:vvv"));
        assert_eq!(kept.extracted_results[1], "…[999 more truncated]");
    }

    #[test]
    fn short_fields_are_left_alone() {
        let mut f = finding(3, Severity::Medium);
        let before = f.clone();
        assert!(!clamp_finding(
            &mut f,
            DEFAULT_MAX_FIELD_BYTES,
            DEFAULT_MAX_LIST_BYTES
        ));
        assert_eq!(f, before);
    }

    #[test]
    fn a_finding_bigger_than_the_whole_budget_does_not_block_the_rest() {
        let mut report = Report::new(ReportLimits {
            budget_bytes: 2_000,
            ..ReportLimits::default()
        });
        let mut big = finding(1, Severity::Critical);
        big.description = "d".repeat(3_000);
        report.push(big);
        report.push(finding(2, Severity::Info));
        report.push(finding(3, Severity::Low));
        assert_eq!(report.total(), 3);
        assert_eq!(report.stored(), 2);
        assert!(report.truncated());
        assert!(report.stored_bytes() <= 2_000);
    }

    #[test]
    fn an_empty_report_is_an_empty_list() {
        let report = Report::default();
        assert_eq!(
            (report.total(), report.stored(), report.stored_bytes()),
            (0, 0, 2)
        );
        assert!(!report.truncated());
        assert!(report.findings().is_empty());
    }
}

/// Whatever findings a scan produces: the stored list stays in its budget.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn finding() -> impl Strategy<Value = Finding> {
        (
            "[a-z-]{1,30}",
            prop::option::of(prop::sample::select(Severity::ALL.to_vec())),
            "\\PC{0,3000}",
            prop::collection::vec("\\PC{0,300}", 0..8),
        )
            .prop_map(|(id, severity, description, extracted)| Finding {
                template_id: id,
                severity,
                description,
                extracted_results: extracted,
                ..Finding::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn the_stored_findings_fit_the_budget_and_the_totals_count_everything(
            findings in prop::collection::vec(finding(), 0..60),
            budget in 2usize..60_000,
        ) {
            let mut report = Report::new(ReportLimits { budget_bytes: budget, ..ReportLimits::default() });
            for f in &findings {
                report.push(f.clone());
            }
            prop_assert_eq!(report.total(), findings.len() as i64);
            prop_assert_eq!(report.by_severity().values().sum::<i64>(), findings.len() as i64);
            let stored = report.into_findings();
            prop_assert!(serde_json::to_vec(&stored).unwrap().len() <= budget);
        }
    }
}
