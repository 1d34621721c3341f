//! Pure statistics over recorded times (seconds since the run's epoch).

use std::collections::BTreeMap;

use serde::Serialize;

/// Distribution summary of a sample, in the sample's unit.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of a sorted, non-empty slice (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p95/p99/max/mean of `values` (empty gives all zeros).
pub fn summarize(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_by(f64::total_cmp);
    Summary {
        count: v.len(),
        p50: percentile(&v, 0.50),
        p95: percentile(&v, 0.95),
        p99: percentile(&v, 0.99),
        max: *v.last().unwrap_or(&0.0),
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// Events per minute over the span of `times` (between the first and the
/// last; needs at least two).
pub fn rate_per_minute(times: &[f64]) -> Option<f64> {
    if times.len() < 2 {
        return None;
    }
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = last - first;
    (span > 0.0).then(|| (times.len() - 1) as f64 * 60.0 / span)
}

/// Events per minute as the least-squares slope of the event index over its
/// time: less sensitive than [`rate_per_minute`] to one late first or early
/// last event (needs at least two distinct times).
pub fn slope_per_minute(times: &[f64]) -> Option<f64> {
    let mut t: Vec<f64> = times.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len() as f64;
    if t.len() < 2 {
        return None;
    }
    let mean_t = t.iter().sum::<f64>() / n;
    let mean_i = (n - 1.0) / 2.0;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, x) in t.iter().enumerate() {
        num += (x - mean_t) * (i as f64 - mean_i);
        den += (x - mean_t) * (x - mean_t);
    }
    (den > 0.0).then(|| num / den * 60.0)
}

/// The most events that fall in any window of `window` seconds.
pub fn max_in_window(times: &[f64], window: f64) -> usize {
    let mut t: Vec<f64> = times.to_vec();
    t.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Slot hand-over latencies: each finish, in time order, is paired with the
/// earliest not yet paired creation at or after it. Creations with no finish
/// before them (filling free slots) stay unpaired.
pub fn handover_latencies(finishes: &[f64], creations: &[f64]) -> Vec<f64> {
    let mut f: Vec<f64> = finishes.to_vec();
    let mut c: Vec<f64> = creations.to_vec();
    f.sort_by(f64::total_cmp);
    c.sort_by(f64::total_cmp);
    let mut out = Vec::new();
    let mut j = 0;
    for t in f {
        while j < c.len() && c[j] < t {
            j += 1;
        }
        if j == c.len() {
            break;
        }
        out.push(c[j] - t);
        j += 1;
    }
    out
}

/// One scanner Job as the harness saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobObs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `namespace/name` of its NucleiScan.
    pub scan: String,
    /// Its scan label (the NucleiScan's name as a label value).
    pub scan_label: String,
    /// Its run token label.
    pub run: String,
    /// First seen (watch), seconds since the epoch of the run.
    pub added: f64,
    /// First seen with a `Complete` or `Failed` condition.
    pub finished: Option<f64>,
    /// `Complete` or `Failed`.
    pub outcome: Option<String>,
}

/// Duplicate-Job checks over every Job seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Duplicates {
    /// (scan, run) pairs with more than one Job (distinct uids).
    pub duplicate_runs: Vec<String>,
    /// Scans with a Job created while an earlier Job of the same scan had
    /// not finished.
    pub overlapping_scans: Vec<String>,
    /// Scans with more than one Job in all (re-runs; none expected with the
    /// fixture, which always succeeds, and rescans days away).
    pub scans_with_several_jobs: usize,
    /// Distinct scans that had a Job.
    pub scans_with_jobs: usize,
}

/// Finds duplicate Jobs: two Jobs for one run, or two live Jobs for one scan.
pub fn duplicates(jobs: &[JobObs]) -> Duplicates {
    let mut by_run: BTreeMap<(String, String), Vec<&JobObs>> = BTreeMap::new();
    let mut by_scan: BTreeMap<String, Vec<&JobObs>> = BTreeMap::new();
    for j in jobs {
        by_run
            .entry((j.scan.clone(), j.run.clone()))
            .or_default()
            .push(j);
        by_scan.entry(j.scan.clone()).or_default().push(j);
    }
    let duplicate_runs = by_run
        .iter()
        .filter(|(_, js)| {
            let mut uids: Vec<&str> = js.iter().map(|j| j.uid.as_str()).collect();
            uids.sort();
            uids.dedup();
            uids.len() > 1
        })
        .map(|((scan, run), _)| format!("{scan} run {run}"))
        .collect();
    let mut overlapping_scans = Vec::new();
    for (scan, js) in &by_scan {
        let mut js = js.clone();
        js.sort_by(|a, b| a.added.total_cmp(&b.added));
        let overlap = js.windows(2).any(|w| match w[0].finished {
            Some(f) => w[1].added < f,
            None => true,
        });
        if overlap {
            overlapping_scans.push(scan.clone());
        }
    }
    Duplicates {
        duplicate_runs,
        overlapping_scans,
        scans_with_several_jobs: by_scan.values().filter(|js| js.len() > 1).count(),
        scans_with_jobs: by_scan.len(),
    }
}

/// Replays Job add/finish events and returns (max unfinished, number of
/// events after which more than `limit` were unfinished), considering only
/// events in `[from, to]` but counting Jobs that were live before `from`.
pub fn concurrency(jobs: &[JobObs], limit: usize, from: f64, to: f64) -> (usize, usize) {
    let (max, over) = concurrency_detail(jobs, limit, from, to);
    (max, over.len())
}

/// Like [`concurrency`], with the times of the Job creations that took the
/// count above `limit`.
pub fn concurrency_detail(jobs: &[JobObs], limit: usize, from: f64, to: f64) -> (usize, Vec<f64>) {
    // (time, +1/-1); at equal times a finish goes before a start.
    let mut events: Vec<(f64, i64)> = Vec::new();
    for j in jobs {
        events.push((j.added, 1));
        if let Some(f) = j.finished {
            events.push((f, -1));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut live, mut max, mut over) = (0i64, 0usize, Vec::new());
    for (t, d) in events {
        live += d;
        if t < from || t > to {
            continue;
        }
        let n = live.max(0) as usize;
        max = max.max(n);
        if d > 0 && n > limit {
            over.push(t);
        }
    }
    (max, over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(summarize(&[]).count, 0);
        assert_eq!(summarize(&[3.0]).p99, 3.0);
    }

    #[test]
    fn the_rate_counts_intervals_between_first_and_last() {
        let t: Vec<f64> = (0..121).map(|i| f64::from(i) * 0.5).collect();
        assert_eq!(rate_per_minute(&t), Some(120.0));
        assert_eq!(rate_per_minute(&[1.0]), None);
        let slope = slope_per_minute(&t).unwrap();
        assert!((slope - 120.0).abs() < 1e-9, "{slope}");
        // A late first event shortens the span but hardly moves the slope.
        let mut late = t.clone();
        late[0] = 0.45;
        let (span, fit) = (
            rate_per_minute(&late).unwrap(),
            slope_per_minute(&late).unwrap(),
        );
        assert!(
            (span - 120.0).abs() > 5.0 * (fit - 120.0).abs(),
            "{span} {fit}"
        );
    }

    #[test]
    fn the_busiest_window_is_found() {
        let t = [0.0, 10.0, 59.9, 60.0, 61.0, 62.0];
        assert_eq!(max_in_window(&t, 60.0), 5);
    }

    #[test]
    fn each_finish_pairs_with_the_next_unpaired_creation() {
        // Two slots filled at 0; finishes at 1.0 and 1.1; refills at 1.2 and 1.5.
        let lat = handover_latencies(&[1.0, 1.1], &[0.0, 0.0, 1.2, 1.5]);
        let lat: Vec<f64> = lat.iter().map(|x| (x * 100.0).round() / 100.0).collect();
        assert_eq!(lat, [0.2, 0.4]);
        assert!(handover_latencies(&[5.0], &[1.0]).is_empty());
    }

    fn job(scan: &str, run: &str, uid: &str, added: f64, finished: Option<f64>) -> JobObs {
        JobObs {
            scan: scan.into(),
            run: run.into(),
            uid: uid.into(),
            added,
            finished,
            ..JobObs::default()
        }
    }

    #[test]
    fn two_jobs_for_one_run_or_two_live_jobs_for_one_scan_are_duplicates() {
        let ok = [
            job("a", "r1", "u1", 0.0, Some(1.0)),
            job("a", "r2", "u2", 2.0, Some(3.0)),
            job("b", "r1", "u3", 0.0, None),
        ];
        let d = duplicates(&ok);
        assert!(d.duplicate_runs.is_empty() && d.overlapping_scans.is_empty());
        assert_eq!((d.scans_with_several_jobs, d.scans_with_jobs), (1, 2));

        let bad = [
            job("a", "r1", "u1", 0.0, Some(5.0)),
            job("a", "r1", "u2", 6.0, None),
            job("b", "r1", "u3", 0.0, None),
            job("b", "r2", "u4", 1.0, None),
        ];
        let d = duplicates(&bad);
        assert_eq!(d.duplicate_runs, ["a run r1"]);
        assert_eq!(d.overlapping_scans, ["b"]);
    }

    #[test]
    fn concurrency_counts_live_jobs_and_starts_above_the_limit() {
        let jobs = [
            job("a", "1", "1", 0.0, Some(2.0)),
            job("b", "1", "2", 1.0, Some(3.0)),
            job("c", "1", "3", 2.0, None), // starts as a finishes: not 3 at once
            job("d", "1", "4", 2.5, None),
        ];
        assert_eq!(concurrency(&jobs, 2, 0.0, 10.0), (3, 1));
        assert_eq!(concurrency(&jobs, 3, 0.0, 10.0), (3, 0));
        // Only the window counts, but live Jobs from before it do.
        assert_eq!(concurrency(&jobs, 2, 2.4, 10.0), (3, 1));
    }
}
