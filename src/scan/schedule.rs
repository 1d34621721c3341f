//! Schedule maths: when a scan is next due, and how long a failed scan waits
//! before its retry. Pure functions of their inputs (the clock and the random
//! source are parameters), so every rule here is unit-tested without a cluster.
//!
//! Accepted schedules (all evaluated in UTC; there is no time-zone or DST
//! handling, so `0 2 * * *` is 02:00 UTC every day of the year):
//!
//! * standard 5-field cron, `minute hour day-of-month month day-of-week`, with
//!   `*`, `?` (day fields), lists `1,15`, ranges `1-5`, steps `*/15`, `10-40/10`,
//!   `5/20`, and the names `JAN`–`DEC` and `SUN`–`SAT` (any case; day-of-week
//!   `0` and `7` are both Sunday). As in Vixie cron and Kubernetes CronJobs,
//!   when both day fields are restricted a day matches if *either* matches
//!   (`0 0 13 * 5` is every 13th and every Friday); a day field starting with `*`
//!   or `?` counts as unrestricted;
//! * the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@midnight` and `@hourly`;
//! * `@every <duration>` with a Go duration of at least one minute
//!   (`@every 90m`), the only form the Go operator understood.
//!
//! 6- and 7-field expressions (with seconds or years) are rejected with a
//! message saying so: Kubernetes CronJobs and the Go operator use 5 fields, and
//! a scan more often than once a minute is never what someone meant.
//!
//! The `cron` crate does the calendar arithmetic (month lengths, leap years).
//! Expressions are parsed here first because the crate differs from standard
//! cron: it wants a seconds field, numbers Sunday 1–7 instead of 0–6, and ANDs
//! the two day fields; parsing ourselves also gives errors that name the field.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

use crate::duration::{format_duration, parse_duration};

/// Shortest interval `@every` accepts.
pub const MIN_EVERY: Duration = Duration::from_secs(60);

/// Suggested `jitter_fraction` for [`backoff_delay`]: retry delays are spread
/// over the lower 20% below the exponential value.
pub const DEFAULT_JITTER_FRACTION: f64 = 0.2;

/// A parsed scan schedule (see the module documentation for the syntax).
///
/// Compares and displays as the expression it was parsed from.
#[derive(Clone, Debug)]
pub struct Schedule {
    source: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Fire times are the earliest of these schedules: one, or two when the
    /// day-of-month and day-of-week fields are ORed.
    Cron(Vec<cron::Schedule>),
    Every(Duration),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

const FIELDS_HINT: &str = "minute hour day-of-month month day-of-week";
const EXAMPLES: &str = r#"e.g. "0 2 * * *", "@daily" or "@every 6h""#;

impl Schedule {
    /// Parses a schedule. The error names the expression and the part that is
    /// wrong, e.g. `invalid schedule "61 * * * *": minute 61 is out of range 0-59`.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        let source = expression.trim();
        let kind = parse_kind(source).map_err(|why| {
            if source.is_empty() {
                why
            } else {
                format!("invalid schedule {source:?}: {why}")
            }
        })?;
        Ok(Schedule {
            source: source.to_owned(),
            kind,
        })
    }

    /// The expression as written (surrounding white space removed).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The interval of an `@every` schedule; `None` for cron schedules.
    pub fn every(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every(interval) => Some(interval),
            Kind::Cron(_) => None,
        }
    }

    /// The first fire time strictly after `after`; for `@every`, `after` plus
    /// the interval. `None` when there is none (a cron date past the year 2100,
    /// or a time beyond what `chrono` can represent).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every(interval) => add(after, *interval),
            Kind::Cron(schedules) => schedules
                .iter()
                .filter_map(|schedule| schedule.after(&after).next())
                .min(),
        }
    }
}

/// When a scan should next run, given its schedule, the operator's rescan age,
/// the time of its last scan and the current time.
///
/// * Never scanned (`last_scan` is `None`): due now, whatever the schedule.
/// * With a schedule: the first fire time after `last_scan`; `rescan_age` is
///   ignored. If the operator was down across one or more fire times, the
///   result is the earliest missed one, which is in the past, so the scan runs
///   once at once; the scan that then runs becomes `last_scan`, and the next
///   call returns the first fire time after it. Missed slots are not caught up
///   one by one.
/// * Without a schedule: `last_scan + rescan_age`; a `rescan_age` of `None` or
///   zero disables rescans and gives `None`.
///
/// A result at or before `now` means "due now". `None` means "never again until
/// something changes" (a spec edit or a manual rescan request).
pub fn next_run(
    schedule: Option<&Schedule>,
    rescan_age: Option<Duration>,
    last_scan: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let Some(last_scan) = last_scan else {
        return Some(now);
    };
    match schedule {
        Some(schedule) => schedule.next_after(last_scan),
        None => match rescan_age {
            Some(age) if !age.is_zero() => add(last_scan, age),
            _ => None,
        },
    }
}

/// How long a failed scan waits before retry number `retry_count + 1` (pass 0
/// before the first retry).
///
/// The undisturbed delay is `initial * multiplier^retry_count`, capped at `max`.
/// Jitter only ever shortens it: the result is uniformly drawn from
/// `[(1 - jitter_fraction) * delay, delay]`, so it never exceeds `max` and
/// retries of scans that failed together (a target down for everyone) spread
/// out instead of returning in step. `jitter_fraction` is clamped to `0..=1`
/// (`1` is "full jitter"); a multiplier below 1 or not finite counts as 1. Never
/// panics: any `retry_count` (even `u32::MAX`) gives at most `max`.
pub fn backoff_delay<R: Rng + ?Sized>(
    retry_count: u32,
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter_fraction: f64,
    rng: &mut R,
) -> Duration {
    let multiplier = if multiplier.is_finite() && multiplier >= 1.0 {
        multiplier
    } else {
        1.0
    };
    let jitter = if jitter_fraction.is_nan() {
        0.0
    } else {
        jitter_fraction.clamp(0.0, 1.0)
    };

    let cap = initial.min(max);
    let grown = initial.as_secs_f64() * multiplier.powf(f64::from(retry_count));
    let delay = if grown.is_finite() && grown < max.as_secs_f64() {
        Duration::try_from_secs_f64(grown).map_or(max, |d| d.clamp(cap, max))
    } else {
        max
    };
    if jitter == 0.0 {
        return delay;
    }
    let keep = (1.0 - jitter * rng.random::<f64>()).clamp(0.0, 1.0);
    // Via try_from: near Duration::MAX the f64 round trip can exceed it.
    Duration::try_from_secs_f64(delay.as_secs_f64() * keep).map_or(delay, |d| d.min(delay))
}

fn add(at: DateTime<Utc>, interval: Duration) -> Option<DateTime<Utc>> {
    at.checked_add_signed(TimeDelta::from_std(interval).ok()?)
}

fn parse_kind(source: &str) -> Result<Kind, String> {
    if source.is_empty() {
        return Err(format!("empty schedule ({EXAMPLES})"));
    }
    if let Some(descriptor) = source.strip_prefix('@') {
        return parse_descriptor(descriptor);
    }

    let mut fields: Vec<&str> = source.split_whitespace().collect();
    if let Some(zone) = fields
        .first()
        .and_then(|f| f.strip_prefix("CRON_TZ=").or_else(|| f.strip_prefix("TZ=")))
    {
        if !matches!(zone, "UTC" | "Etc/UTC") {
            return Err(format!(
                "time zone {zone:?} is not supported: schedules are evaluated in UTC"
            ));
        }
        fields.remove(0);
    }
    if fields.len() != 5 {
        let extra = if matches!(fields.len(), 6 | 7) {
            "; fields for seconds and years are not supported"
        } else {
            ""
        };
        return Err(format!(
            "expected 5 fields ({FIELDS_HINT}) but found {}{extra}",
            fields.len()
        ));
    }
    cron_kind(fields[0], fields[1], fields[2], fields[3], fields[4])
}

fn parse_descriptor(descriptor: &str) -> Result<Kind, String> {
    let (word, argument) = match descriptor.split_once(char::is_whitespace) {
        Some((word, argument)) => (word, argument.trim()),
        None => (descriptor, ""),
    };
    let word = word.to_ascii_lowercase();
    if word == "every" {
        if argument.is_empty() {
            return Err("@every needs an interval, e.g. \"@every 6h\"".to_owned());
        }
        let interval = parse_duration(argument).map_err(|why| format!("@every: {why}"))?;
        if interval < MIN_EVERY {
            return Err(format!(
                "@every interval {} is shorter than the minimum of {}",
                format_duration(interval),
                format_duration(MIN_EVERY)
            ));
        }
        return Ok(Kind::Every(interval));
    }
    let fields = match word.as_str() {
        "yearly" | "annually" => ["0", "0", "1", "1", "*"],
        "monthly" => ["0", "0", "1", "*", "*"],
        "weekly" => ["0", "0", "*", "*", "0"],
        "daily" | "midnight" => ["0", "0", "*", "*", "*"],
        "hourly" => ["0", "*", "*", "*", "*"],
        _ => {
            return Err(format!(
                "unknown descriptor \"@{word}\" (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)"
            ));
        }
    };
    if !argument.is_empty() {
        return Err(format!("@{word} takes no argument, found {argument:?}"));
    }
    let [minute, hour, dom, month, dow] = fields;
    cron_kind(minute, hour, dom, month, dow)
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, … (lowercase; matched ignoring case).
    names: &'static [&'static str],
    /// Whether `?` is accepted as a synonym of `*`.
    any: bool,
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    any: false,
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    any: false,
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    any: true,
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    any: false,
};
// 7 is accepted as a second Sunday (as in Vixie cron) and folded onto 0.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    any: true,
};

// Longest month length for months 1..=12; February may have a 29th.
const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

fn cron_kind(minute: &str, hour: &str, dom: &str, month: &str, dow: &str) -> Result<Kind, String> {
    let minutes = parse_field(minute, &MINUTE)?;
    let hours = parse_field(hour, &HOUR)?;
    let days = parse_field(dom, &DAY_OF_MONTH)?;
    let months = parse_field(month, &MONTH)?;
    let weekdays: BTreeSet<u32> = parse_field(dow, &DAY_OF_WEEK)?
        .into_iter()
        .map(|d| d % 7)
        .collect();

    let dom_restricted = !is_star(dom);
    let dow_restricted = !is_star(dow);

    // Only the day-of-month path can be impossible ("30 2" never comes); say so
    // instead of scheduling a scan that never runs.
    let dom_possible = months
        .iter()
        .any(|m| days.iter().any(|d| *d <= DAYS_IN_MONTH[*m as usize - 1]));
    let weekday_can_fire = dom_restricted && dow_restricted;
    if !dom_possible && !weekday_can_fire {
        return Err(format!(
            "day-of-month {dom:?} never occurs in month {month:?}, so the schedule would never run"
        ));
    }

    let minutes = join(&minutes);
    let hours = join(&hours);
    let months = join(&months);
    // The cron crate numbers the days of the week Sunday = 1 … Saturday = 7.
    let weekdays_field = if weekdays.len() == 7 {
        "*".to_owned()
    } else {
        join(&weekdays.iter().map(|d| d + 1).collect())
    };
    let days_field = if days.len() == 31 {
        "*".to_owned()
    } else {
        join(&days)
    };

    let expressions = if weekday_can_fire {
        let mut both = vec![format!("0 {minutes} {hours} * {months} {weekdays_field}")];
        if dom_possible {
            both.push(format!("0 {minutes} {hours} {days_field} {months} *"));
        }
        both
    } else {
        vec![format!(
            "0 {minutes} {hours} {days_field} {months} {weekdays_field}"
        )]
    };
    expressions
        .into_iter()
        .map(|e| {
            e.parse::<cron::Schedule>()
                .map_err(|why| format!("internal error translating to {e:?}: {why}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Kind::Cron)
}

fn is_star(field: &str) -> bool {
    field.starts_with('*') || field.starts_with('?')
}

fn join(values: &BTreeSet<u32>) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_field(text: &str, spec: &FieldSpec) -> Result<BTreeSet<u32>, String> {
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!(
                "{} field {text:?} has an empty list item",
                spec.name
            ));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(step, item, spec)?)),
            None => (item, None),
        };
        let (start, end) = if range == "*" || (spec.any && range == "?") {
            (spec.min, spec.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let low = parse_value(low, spec)?;
            let high = parse_value(high, spec)?;
            if low > high {
                return Err(format!(
                    "{} range {range:?} runs backwards ({low} is after {high})",
                    spec.name
                ));
            }
            (low, high)
        } else {
            let value = parse_value(range, spec)?;
            // "5/20" means "from 5, every 20"; a bare value is just itself.
            (value, if step.is_some() { spec.max } else { value })
        };
        let step = step.unwrap_or(1);
        values.extend((start..=end).step_by(step as usize));
    }
    Ok(values)
}

fn parse_step(step: &str, item: &str, spec: &FieldSpec) -> Result<u32, String> {
    let span = spec.max - spec.min + 1;
    let value = if !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) {
        step.parse::<u32>().ok()
    } else {
        None
    };
    match value {
        Some(value) if (1..=span).contains(&value) => Ok(value),
        Some(0) => Err(format!("{} step in {item:?} must be at least 1", spec.name)),
        Some(value) if spec.name == "minute" || spec.name == "hour" => {
            let unit = if spec.name == "minute" { "m" } else { "h" };
            Err(format!(
                "{} step {value} in {item:?} is larger than the field's range {}-{}; for an interval use \"@every {value}{unit}\"",
                spec.name, spec.min, spec.max
            ))
        }
        Some(value) => Err(format!(
            "{} step {value} in {item:?} is larger than the field's range {}-{}",
            spec.name, spec.min, spec.max
        )),
        None => Err(format!(
            "{} step {step:?} in {item:?} is not a positive whole number",
            spec.name
        )),
    }
}

fn parse_value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(value) if (spec.min..=spec.max).contains(&value) => Ok(value),
            _ => Err(format!(
                "{} {text} is out of range {}-{}",
                spec.name, spec.min, spec.max
            )),
        };
    }
    if let Some(index) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        return Ok(spec.min + index as u32);
    }
    let expected = match spec.names {
        [] => format!("a number {}-{}", spec.min, spec.max),
        [first, .., last] => format!(
            "a number {}-{} or a name {}-{}",
            spec.min,
            spec.max,
            first.to_ascii_uppercase(),
            last.to_ascii_uppercase()
        ),
        [only] => format!("a number {}-{} or {only}", spec.min, spec.max),
    };
    Err(format!(
        "{} {text:?} is not valid: expected {expected}",
        spec.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, Timelike};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
            .with_timezone(&Utc)
    }

    fn schedule(expression: &str) -> Schedule {
        Schedule::parse(expression).unwrap_or_else(|e| panic!("{expression:?}: {e}"))
    }

    fn rejection(expression: &str) -> String {
        match Schedule::parse(expression) {
            Ok(s) => panic!("{expression:?} should be rejected, parsed as {s:?}"),
            Err(e) => e,
        }
    }

    /// The first `n` fire times after `from`.
    fn fire_times(expression: &str, from: &str, n: usize) -> Vec<DateTime<Utc>> {
        let s = schedule(expression);
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).expect("a next fire time");
                t
            })
            .collect()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_daily_schedule_fires_at_the_next_midnight_utc() {
        for expression in ["@daily", "@midnight", "0 0 * * *", "@DAILY"] {
            assert_eq!(
                schedule(expression).next_after(at("2024-05-10T13:45:00Z")),
                Some(at("2024-05-11T00:00:00Z")),
                "{expression}"
            );
        }
    }

    #[test]
    fn the_next_fire_time_is_strictly_after_the_given_time() {
        let daily = schedule("@daily");
        assert_eq!(
            daily.next_after(at("2024-05-11T00:00:00Z")),
            Some(at("2024-05-12T00:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2024-05-10T23:59:59.999Z")),
            Some(at("2024-05-11T00:00:00Z"))
        );
    }

    #[test]
    fn every_minute_fires_on_each_minute_boundary() {
        assert_eq!(
            fire_times("*/1 * * * *", "2024-12-31T23:58:30Z", 3),
            vec![
                at("2024-12-31T23:59:00Z"),
                at("2025-01-01T00:00:00Z"),
                at("2025-01-01T00:01:00Z"),
            ]
        );
    }

    #[test]
    fn the_31st_skips_months_with_fewer_days() {
        assert_eq!(
            fire_times("0 0 31 * *", "2024-01-31T00:00:00Z", 4),
            vec![
                at("2024-03-31T00:00:00Z"),
                at("2024-05-31T00:00:00Z"),
                at("2024-07-31T00:00:00Z"),
                at("2024-08-31T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn the_first_of_the_month_follows_january_31st() {
        assert_eq!(
            fire_times("0 0 1 * *", "2023-01-31T12:00:00Z", 2),
            vec![at("2023-02-01T00:00:00Z"), at("2023-03-01T00:00:00Z")]
        );
        assert_eq!(
            schedule("@monthly").next_after(at("2023-12-31T23:59:00Z")),
            Some(at("2024-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn february_29th_fires_only_in_leap_years() {
        assert_eq!(
            fire_times("0 0 29 2 *", "2023-03-01T00:00:00Z", 3),
            vec![
                at("2024-02-29T00:00:00Z"),
                at("2028-02-29T00:00:00Z"),
                at("2032-02-29T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn schedules_are_utc_so_dst_changes_do_not_move_them() {
        // 2024-03-31 and 2024-10-27 are the EU DST switches, 2024-03-10 the US one.
        let times = fire_times("0 2 * * *", "2024-03-09T12:00:00Z", 240);
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], TimeDelta::hours(24));
        }
        assert!(times.iter().all(|t| t.hour() == 2 && t.minute() == 0));
    }

    #[test]
    fn yearly_weekly_and_hourly_descriptors_mean_what_cron_means() {
        let from = "2024-05-15T10:30:00Z"; // a Wednesday
        assert_eq!(
            fire_times("@yearly", from, 1),
            vec![at("2025-01-01T00:00:00Z")]
        );
        assert_eq!(
            fire_times("@annually", from, 1),
            vec![at("2025-01-01T00:00:00Z")]
        );
        assert_eq!(
            fire_times("@weekly", from, 1),
            vec![at("2024-05-19T00:00:00Z")]
        );
        assert_eq!(
            fire_times("@hourly", from, 1),
            vec![at("2024-05-15T11:00:00Z")]
        );
    }

    #[test]
    fn weekdays_count_from_sunday_0_and_7_is_sunday_too() {
        let from = "2024-05-15T10:30:00Z"; // a Wednesday
        for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun"] {
            assert_eq!(
                fire_times(sunday, from, 1),
                vec![at("2024-05-19T00:00:00Z")],
                "{sunday}"
            );
        }
        let weekdays = fire_times("0 9 * * 1-5", "2024-05-17T10:00:00Z", 2);
        assert_eq!(
            weekdays,
            vec![at("2024-05-20T09:00:00Z"), at("2024-05-21T09:00:00Z")]
        );
        assert_eq!(
            fire_times("0 9 * * MON-FRI", "2024-05-17T10:00:00Z", 2),
            weekdays
        );
        assert_eq!(
            fire_times("0 0 * * 5-7", "2024-05-15T00:00:00Z", 3),
            vec![
                at("2024-05-17T00:00:00Z"),
                at("2024-05-18T00:00:00Z"),
                at("2024-05-19T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn restricting_both_day_fields_fires_on_either() {
        // The 13th of every month, and every Friday (2024-09-13 is a Friday).
        assert_eq!(
            fire_times("0 0 13 * 5", "2024-09-01T00:00:00Z", 5),
            vec![
                at("2024-09-06T00:00:00Z"),
                at("2024-09-13T00:00:00Z"),
                at("2024-09-20T00:00:00Z"),
                at("2024-09-27T00:00:00Z"),
                at("2024-10-04T00:00:00Z"),
            ]
        );
        // A starred day-of-month leaves only the weekday restriction.
        assert_eq!(
            fire_times("0 0 * * 5", "2024-09-01T00:00:00Z", 1),
            vec![at("2024-09-06T00:00:00Z")]
        );
    }

    #[test]
    fn lists_ranges_steps_and_month_names_combine() {
        assert_eq!(
            fire_times("5,35 */6 * JAN,jul *", "2024-06-30T23:00:00Z", 3),
            vec![
                at("2024-07-01T00:05:00Z"),
                at("2024-07-01T00:35:00Z"),
                at("2024-07-01T06:05:00Z"),
            ]
        );
        assert_eq!(
            fire_times("10-40/15 1 * * *", "2024-01-01T00:00:00Z", 4),
            vec![
                at("2024-01-01T01:10:00Z"),
                at("2024-01-01T01:25:00Z"),
                at("2024-01-01T01:40:00Z"),
                at("2024-01-02T01:10:00Z"),
            ]
        );
        assert_eq!(
            fire_times("50/5 0 ? * ?", "2024-01-01T00:00:00Z", 3),
            vec![
                at("2024-01-01T00:50:00Z"),
                at("2024-01-01T00:55:00Z"),
                at("2024-01-02T00:50:00Z"),
            ]
        );
    }

    #[test]
    fn every_adds_its_interval_to_the_given_time() {
        let s = schedule("@every 90m");
        assert_eq!(s.every(), Some(secs(5400)));
        assert_eq!(
            s.next_after(at("2024-05-10T13:45:10Z")),
            Some(at("2024-05-10T15:15:10Z"))
        );
        assert_eq!(schedule("@every 1h30m").every(), Some(secs(5400)));
        assert_eq!(schedule("@daily").every(), None);
    }

    #[test]
    fn every_rejects_intervals_under_a_minute_and_bad_durations() {
        assert!(rejection("@every 30s").contains("shorter than the minimum of 1m0s"));
        assert!(rejection("@every 0").contains("shorter than the minimum"));
        assert!(rejection("@every").contains("needs an interval"));
        assert!(rejection("@every 7d").contains(r#"unknown unit "d""#));
        assert!(rejection("@every -5m").contains("negative"));
        assert_eq!(schedule("@every 1m").every(), Some(secs(60)));
    }

    #[test]
    fn an_empty_schedule_is_rejected_with_examples() {
        for empty in ["", "   "] {
            let e = rejection(empty);
            assert!(e.starts_with("empty schedule"), "{e}");
            assert!(e.contains("@daily"), "{e}");
        }
    }

    #[test]
    fn six_and_seven_field_expressions_are_rejected_as_seconds_or_years() {
        let e = rejection("apple banana cherry damson elder fig");
        assert!(e.contains("expected 5 fields"), "{e}");
        assert!(e.contains("but found 6"), "{e}");
        assert!(e.contains("seconds and years are not supported"), "{e}");
        assert!(rejection("0 0 0 * * * 2030").contains("but found 7"));
        let e = rejection("* * *");
        assert!(e.contains("but found 3"), "{e}");
        assert!(!e.contains("seconds"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_field_and_its_range() {
        assert_eq!(
            rejection("61 * * * *"),
            r#"invalid schedule "61 * * * *": minute 61 is out of range 0-59"#
        );
        assert!(rejection("0 24 * * *").contains("hour 24 is out of range 0-23"));
        assert!(rejection("0 0 0 * *").contains("day-of-month 0 is out of range 1-31"));
        assert!(rejection("0 0 * 13 *").contains("month 13 is out of range 1-12"));
        assert!(rejection("0 0 * * 8").contains("day-of-week 8 is out of range 0-7"));
        assert!(
            rejection("99999999999999 * * * *").contains("minute 99999999999999 is out of range")
        );
    }

    #[test]
    fn words_and_unicode_are_rejected_with_what_was_expected() {
        let e = rejection("five past every hour please");
        assert!(
            e.contains(r#"minute "five" is not valid: expected a number 0-59"#),
            "{e}"
        );
        let e = rejection("０ * * * *");
        assert!(e.contains(r#"minute "０" is not valid"#), "{e}");
        let e = rejection("0 0 * * 🙂");
        assert!(
            e.contains(r#"day-of-week "🙂" is not valid: expected a number 0-7 or a name SUN-SAT"#),
            "{e}"
        );
        assert!(rejection("0 0 * FOO *").contains("a name JAN-DEC"));
        assert!(rejection("? 0 * * *").contains(r#"minute "?" is not valid"#));
    }

    #[test]
    fn malformed_lists_ranges_and_steps_are_rejected() {
        assert!(rejection("1,,2 * * * *").contains("empty list item"));
        assert!(rejection("5-1 * * * *").contains(r#"range "5-1" runs backwards"#));
        assert!(rejection("*/0 * * * *").contains("must be at least 1"));
        assert!(rejection("*/x * * * *").contains("not a positive whole number"));
        let e = rejection("*/90 * * * *");
        assert!(e.contains("larger than the field's range 0-59"), "{e}");
        assert!(e.contains("@every 90m"), "{e}");
    }

    #[test]
    fn unknown_descriptors_and_arguments_to_fixed_ones_are_rejected() {
        let e = rejection("@fortnightly");
        assert!(e.contains(r#"unknown descriptor "@fortnightly""#), "{e}");
        assert!(e.contains("@every <duration>"), "{e}");
        assert!(rejection("@daily 5").contains("takes no argument"));
    }

    #[test]
    fn dates_that_never_occur_are_rejected_instead_of_never_running() {
        let e = rejection("0 0 30 2 *");
        assert!(e.contains("never occurs"), "{e}");
        assert!(rejection("0 0 31 4,6,9,11 *").contains("never occurs"));
        // Still fine when a weekday can fire instead.
        assert_eq!(
            fire_times("0 0 30 2 1", "2024-02-01T00:00:00Z", 1),
            vec![at("2024-02-05T00:00:00Z")]
        );
    }

    #[test]
    fn time_zones_other_than_utc_are_rejected() {
        let e = rejection("CRON_TZ=Europe/Copenhagen 0 2 * * *");
        assert!(e.contains("evaluated in UTC"), "{e}");
        assert_eq!(
            fire_times("TZ=UTC 0 2 * * *", "2024-01-01T00:00:00Z", 1),
            vec![at("2024-01-01T02:00:00Z")]
        );
    }

    #[test]
    fn schedules_compare_and_display_as_their_trimmed_source() {
        let s = schedule("  0 2 * * *\n");
        assert_eq!(s.to_string(), "0 2 * * *");
        assert_eq!(s, "0 2 * * *".parse::<Schedule>().unwrap());
        assert_ne!(s, schedule("0 3 * * *"));
    }

    #[test]
    fn a_scan_never_run_is_due_now_whatever_the_schedule() {
        let now = at("2024-05-10T13:45:00Z");
        assert_eq!(next_run(None, None, None, now), Some(now));
        assert_eq!(
            next_run(Some(&schedule("@yearly")), Some(secs(3600)), None, now),
            Some(now)
        );
    }

    #[test]
    fn a_schedule_runs_at_the_first_fire_time_after_the_last_scan() {
        let now = at("2024-05-10T13:45:00Z");
        let nightly = schedule("0 2 * * *");
        assert_eq!(
            next_run(
                Some(&nightly),
                Some(secs(3600)),
                Some(at("2024-05-10T02:00:07Z")),
                now
            ),
            Some(at("2024-05-11T02:00:00Z"))
        );
    }

    #[test]
    fn missed_slots_while_the_operator_was_down_run_once_not_once_each() {
        let nightly = schedule("0 2 * * *");
        let last = at("2024-05-01T02:00:05Z");
        // Down for a week: the earliest missed slot is returned, already past, so
        // the scan is due at once.
        let now = at("2024-05-08T09:00:00Z");
        let due = next_run(Some(&nightly), None, Some(last), now).unwrap();
        assert_eq!(due, at("2024-05-02T02:00:00Z"));
        assert!(due <= now);
        // That one catch-up scan becomes the last scan; the next run is tomorrow.
        let caught_up = at("2024-05-08T09:03:00Z");
        assert_eq!(
            next_run(Some(&nightly), None, Some(caught_up), caught_up),
            Some(at("2024-05-09T02:00:00Z"))
        );
    }

    #[test]
    fn without_a_schedule_the_scan_reruns_when_older_than_the_rescan_age() {
        let last = at("2024-05-01T12:00:00Z");
        let now = at("2024-05-02T00:00:00Z");
        assert_eq!(
            next_run(None, Some(secs(168 * 3600)), Some(last), now),
            Some(at("2024-05-08T12:00:00Z"))
        );
    }

    #[test]
    fn a_zero_or_missing_rescan_age_disables_rescans() {
        let last = Some(at("2024-05-01T12:00:00Z"));
        let now = at("2024-06-01T00:00:00Z");
        assert_eq!(next_run(None, Some(Duration::ZERO), last, now), None);
        assert_eq!(next_run(None, None, last, now), None);
    }

    #[test]
    fn a_rescan_age_too_large_for_the_calendar_means_never() {
        let last = Some(at("2024-05-01T12:00:00Z"));
        assert_eq!(
            next_run(None, Some(Duration::MAX), last, at("2024-05-02T00:00:00Z")),
            None
        );
    }

    #[test]
    fn an_every_schedule_counts_from_the_last_scan() {
        let last = at("2024-05-01T12:00:00Z");
        assert_eq!(
            next_run(
                Some(&schedule("@every 6h")),
                Some(secs(3600)),
                Some(last),
                last
            ),
            Some(at("2024-05-01T18:00:00Z"))
        );
    }

    #[test]
    fn cron_dates_after_2100_are_none_rather_than_a_hang() {
        let leap_day = schedule("0 0 29 2 *");
        assert_eq!(
            leap_day.next_after(at("2096-03-01T00:00:00Z")),
            None,
            "2100 is not a leap year and the cron crate stops there"
        );
        let next = leap_day.next_after(at("2092-03-01T00:00:00Z")).unwrap();
        assert_eq!(
            next.date_naive(),
            NaiveDate::from_ymd_opt(2096, 2, 29).unwrap()
        );
        assert_eq!(next.year(), 2096);
    }

    #[test]
    fn backoff_grows_by_the_multiplier_without_jitter() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..8)
            .map(|n| backoff_delay(n, secs(10), secs(600), 2.0, 0.0, &mut rng))
            .collect();
        assert_eq!(
            delays,
            [10, 20, 40, 80, 160, 320, 600, 600].map(secs).to_vec()
        );
    }

    #[test]
    fn backoff_is_capped_and_never_panics_on_huge_retry_counts() {
        let mut rng = StdRng::seed_from_u64(2);
        for n in [30, 64, 1000, u32::MAX] {
            assert_eq!(
                backoff_delay(n, secs(10), secs(600), 2.0, 0.0, &mut rng),
                secs(600)
            );
            let jittered = backoff_delay(n, secs(10), secs(600), 2.0, 0.5, &mut rng);
            assert!(
                jittered <= secs(600) && jittered >= secs(300),
                "{jittered:?}"
            );
        }
        assert_eq!(
            backoff_delay(u32::MAX, secs(10), Duration::MAX, 1e308, 0.0, &mut rng),
            Duration::MAX
        );
        for _ in 0..100 {
            let d = backoff_delay(u32::MAX, Duration::MAX, Duration::MAX, 2.0, 0.3, &mut rng);
            assert!(d >= Duration::MAX.mul_f64(0.69), "{d:?}");
        }
    }

    #[test]
    fn jitter_stays_within_its_fraction_below_the_undisturbed_delay() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            let d = backoff_delay(2, secs(10), secs(600), 2.0, 0.2, &mut rng);
            assert!(d >= secs(32) && d <= secs(40), "{d:?}");
            seen.insert(d.as_millis() / 100);
        }
        assert!(
            seen.len() > 50,
            "jitter should spread, saw {} buckets",
            seen.len()
        );
    }

    #[test]
    fn jitter_is_deterministic_for_a_seeded_rng() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..5)
                .map(|n| backoff_delay(n, secs(10), secs(600), 2.0, 0.2, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn odd_backoff_parameters_are_sanitised_rather_than_trusted() {
        let mut rng = StdRng::seed_from_u64(4);
        // A multiplier below 1, NaN or infinite acts as 1: a constant delay.
        for multiplier in [0.5, -2.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                backoff_delay(5, secs(10), secs(600), multiplier, 0.0, &mut rng),
                secs(10),
                "{multiplier}"
            );
        }
        // An initial delay above the cap is cut to the cap.
        assert_eq!(
            backoff_delay(0, secs(900), secs(600), 2.0, 0.0, &mut rng),
            secs(600)
        );
        // Jitter outside 0..=1 is clamped; NaN means none.
        let full = backoff_delay(0, secs(10), secs(600), 2.0, 5.0, &mut rng);
        assert!(full <= secs(10));
        assert_eq!(
            backoff_delay(0, secs(10), secs(600), 2.0, f64::NAN, &mut rng),
            secs(10)
        );
        assert_eq!(
            backoff_delay(0, secs(10), secs(600), 2.0, -1.0, &mut rng),
            secs(10)
        );
        assert_eq!(
            backoff_delay(3, Duration::ZERO, secs(600), 2.0, 0.2, &mut rng),
            Duration::ZERO
        );
    }
}

/// Whatever a namespace user writes as a schedule: no panic, no hang.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_schedule_parses_or_fails_and_a_parsed_one_computes_its_next_run(
            expression in prop_oneof![
                "\\PC{0,40}",
                "([0-9*/,?LW#-]{1,8} ){4}[0-9A-Za-z*/,?-]{1,8}",
                "@(every|daily|hourly|weekly|monthly|yearly|annually|midnight)( [0-9.]{1,30}[a-z]{0,2})?",
            ],
            after in 0i64..4_000_000_000,
        ) {
            if let Ok(schedule) = Schedule::parse(&expression) {
                let at = DateTime::from_timestamp(after, 0).unwrap();
                if let Some(next) = schedule.next_after(at) {
                    prop_assert!(next > at);
                }
            }
        }
    }
}
