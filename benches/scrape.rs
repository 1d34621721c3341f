//! Cost of a /metrics scrape with the per-scan series (issue #13): the
//! exposition read from a scan cache of N scans (5,000 by default), each
//! completed with a summary and a schedule, side by side with the same
//! registry without a scan cache (a follower's scrape), in one run.
//!
//! Run: `cargo bench -p nuclei-operator --bench scrape` (optionally
//! `-- <scans>`). Prints the median time of a scrape, its size, and the
//! share of a core it takes at the chart's scrape interval.

use std::time::{Duration, Instant};

use chrono::DateTime;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use nuclei_operator::api::{NucleiScan, NucleiScanStatus, ScanPhase, ScanSummary};
use nuclei_operator::metrics::Metrics;
use nuclei_operator::scan::status::time;

const DEFAULT_SCANS: usize = 5_000;
const ROUNDS: usize = 51;

fn scan(i: usize) -> NucleiScan {
    let mut s = NucleiScan::new(&format!("web-{i}-ingress"), Default::default());
    s.metadata.namespace = Some(format!("team-{}", i % 50));
    let at = |secs: i64| {
        Some(time(
            DateTime::from_timestamp(1_796_000_000 + secs, 0).unwrap(),
        ))
    };
    s.status = Some(NucleiScanStatus {
        phase: Some(ScanPhase::Completed),
        summary: Some(ScanSummary {
            total_findings: 7,
            findings_by_severity: [("critical", 1), ("high", 2), ("info", 4)]
                .map(|(k, n)| (k.to_string(), n))
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        last_success_time: at(i as i64),
        next_scheduled_time: at(86_400 + i as i64),
        retry_count: Some(0),
        ..Default::default()
    });
    s
}

/// Median time of `ROUNDS` encodes, and the size of one.
fn measure(m: &Metrics) -> (Duration, usize) {
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(m.encode());
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[ROUNDS / 2], m.encode().len())
}

fn main() {
    let scans = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(DEFAULT_SCANS);
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for i in 0..scans {
        writer.apply_watcher_event(&Event::InitApply(scan(i)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let follower = Metrics::default();
    let leader = Metrics::default();
    leader.read_scans_from(reader);
    let (base, base_bytes) = measure(&follower);
    let (with, with_bytes) = measure(&leader);
    println!("scrape bench: {scans} scans, median of {ROUNDS} scrapes");
    println!("  without the scan cache: {base:?}, {base_bytes} B");
    println!(
        "  with the per-scan series: {with:?}, {:.1} KiB ({:.0} B per scan); {:.3}% of one core at the chart's 30 s scrape interval",
        with_bytes as f64 / 1024.0,
        (with_bytes - base_bytes) as f64 / scans.max(1) as f64,
        with.as_secs_f64() / 30.0 * 100.0
    );
}
