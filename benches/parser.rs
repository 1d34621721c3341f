//! Throughput and memory of the scanner's JSONL path: 100,000 realistic nuclei
//! v3 result lines (each with a ~2 KiB `response`) streamed through
//! `read_findings` into a `Report`.
//!
//! Run: `cargo bench -p nuclei-operator --bench parser` (optionally
//! `-- <lines>`). Prints lines/s, MB/s and the process's peak RSS (VmHWM).
//!
//! The input is produced on the fly by an in-memory reader cycling through
//! 1,000 pre-rendered lines and stamping a unique number into each copy, so the
//! peak RSS measures the parser and report, not a 300 MB input buffer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use nuclei_operator::scanner::{Report, read_findings};
use tokio::io::{AsyncRead, ReadBuf};

const DEFAULT_LINES: usize = 100_000;
const POOL: usize = 1_000;
const STAMP: &str = "00000000";

const SEVERITIES: [&str; 6] = ["info", "info", "low", "medium", "high", "critical"];

// One nuclei v3 `-jsonl` result, as nuclei prints it without `-or`.
fn render(i: usize) -> String {
    let severity = SEVERITIES[(i * 7) % SEVERITIES.len()];
    let response_body: String = (0..40)
        .map(|n| format!("<div class=\\\"row-{n}\\\">lorem ipsum dolor sit amet</div>\\n"))
        .collect();
    let response = format!(
        "HTTP/1.1 200 OK\\r\\nContent-Type: text/html; charset=utf-8\\r\\nServer: nginx/1.25.3\\r\\nX-Request-Id: {i:08x}\\r\\n\\r\\n<html><body>{response_body}</body></html>"
    );
    format!(
        concat!(
            r#"{{"template":"http/exposures/configs/cfg-{t}.yaml","template-url":"https://cloud.projectdiscovery.io/public/cfg-{t}","#,
            r#""template-id":"cfg-{t}","template-path":"/opt/nuclei-templates/http/exposures/configs/cfg-{t}.yaml","#,
            r#""info":{{"name":"Exposed configuration file {t}","author":["pdteam","someone"],"tags":["config","exposure","cve","cve2023"],"#,
            r#""description":"A configuration file was found that exposes internal settings.","reference":["https://example.com/advisory/{t}"],"#,
            r#""severity":"{severity}","metadata":{{"max-request":2,"verified":true}},"#,
            r#""classification":{{"cve-id":["cve-2023-{t}"],"cwe-id":["cwe-200"],"cvss-metrics":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N","cvss-score":7.5}}}},"#,
            r#""matcher-name":"body","type":"http","host":"https://app-{h}.example.com","port":"443","scheme":"https","url":"https://app-{h}.example.com","#,
            r#""matched-at":"https://app-{h}.example.com/.env?n={stamp}","extracted-results":["DB_PASSWORD=redacted","APP_KEY=base64:abc"],"#,
            r#""request":"GET /.env HTTP/1.1\r\nHost: app-{h}.example.com\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n","#,
            r#""response":"{response}","ip":"10.0.{a}.{b}","timestamp":"2025-08-23T14:33:41.123456789+00:00","#,
            r#""curl-command":"curl -X 'GET' -H 'Host: app-{h}.example.com' 'https://app-{h}.example.com/.env'","matcher-status":true}}"#,
            "\n"
        ),
        t = i % 97,
        h = i % 50,
        severity = severity,
        stamp = STAMP,
        response = response,
        a = i % 256,
        b = (i / 256) % 256,
    )
}

// Emits `total` lines, cycling the pool and stamping line i's number into it.
struct Lines {
    pool: Vec<(Vec<u8>, usize)>,
    total: usize,
    next: usize,
    current: Vec<u8>,
    pos: usize,
    bytes: u64,
}

impl Lines {
    fn new(total: usize) -> Self {
        let pool = (0..POOL)
            .map(|i| {
                let line = render(i).into_bytes();
                let at = line
                    .windows(STAMP.len())
                    .position(|w| w == STAMP.as_bytes())
                    .expect("stamp placeholder");
                (line, at)
            })
            .collect();
        Self {
            pool,
            total,
            next: 0,
            current: Vec::new(),
            pos: 0,
            bytes: 0,
        }
    }
}

impl AsyncRead for Lines {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while buf.remaining() > 0 {
            if this.pos == this.current.len() {
                if this.next == this.total {
                    break;
                }
                let (line, at) = &this.pool[this.next % POOL];
                this.current.clear();
                this.current.extend_from_slice(line);
                let stamp = format!("{:08}", this.next);
                this.current[*at..*at + STAMP.len()].copy_from_slice(stamp.as_bytes());
                this.bytes += this.current.len() as u64;
                this.pos = 0;
                this.next += 1;
            }
            let n = buf.remaining().min(this.current.len() - this.pos);
            buf.put_slice(&this.current[this.pos..this.pos + n]);
            this.pos += n;
        }
        Poll::Ready(Ok(()))
    }
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    // `cargo bench` passes `--bench`; the first numeric argument is the line count.
    let lines = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LINES);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");

    let mut input = Lines::new(lines);
    let rss_before = status_kib("VmRSS:");
    let mut report = Report::default();
    let start = Instant::now();
    let stats = runtime.block_on(read_findings(&mut input, |f| report.push(f)));
    let elapsed = start.elapsed().as_secs_f64();

    let mb = input.bytes as f64 / 1e6;
    println!(
        "parser bench: {lines} nuclei v3 JSONL lines, {mb:.1} MB ({} B/line)",
        input.bytes / lines.max(1) as u64
    );
    println!(
        "  parsed: {} findings, {} malformed, {} oversized",
        stats.findings, stats.malformed, stats.oversized
    );
    for e in &stats.first_errors {
        println!("    {e}");
    }
    println!(
        "  report: total {}, stored {} ({} B), truncated {}, by severity {:?}",
        report.total(),
        report.stored(),
        report.stored_bytes(),
        report.truncated(),
        report.by_severity()
    );
    println!(
        "  time: {elapsed:.3} s, {:.0} lines/s, {:.1} MB/s",
        lines as f64 / elapsed,
        mb / elapsed
    );
    match (status_kib("VmHWM:"), rss_before) {
        (Some(peak), Some(before)) => println!(
            "  memory: peak RSS (VmHWM) {:.1} MiB; RSS before parsing {:.1} MiB",
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        ),
        _ => println!("  memory: /proc/self/status not readable"),
    }
    assert_eq!(stats.findings as usize, lines, "every line parses");
}
