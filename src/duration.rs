//! Go-style durations (`30m`, `1h30m`, `1.5h`, `500ms`), as the Go operator,
//! its annotations and its Helm values write them.
//!
//! Parsing follows Go's `time.ParseDuration` with three deliberate differences:
//! negative durations are rejected (no setting here can use one), surrounding
//! white space is ignored, and errors say what was wrong in words a user can act
//! on. Formatting is exactly Go's `time.Duration.String()`, so values written to
//! a status or an Event read the same as the Go operator's `metav1.Duration`.

use std::time::Duration;

const NANOS_PER_MICRO: u128 = 1_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MINUTE: u128 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u128 = 60 * NANOS_PER_MINUTE;

// Go's time.Duration is an i64 of nanoseconds; keeping its limit means a value
// this operator accepts is one the Go operator (and metav1.Duration) accepts too.
const MAX_NANOS: u128 = i64::MAX as u128;

// A fraction digit beyond the 18th is worth less than 1 ns even for hours.
const MAX_FRACTION_DIGITS: usize = 18;

const EXAMPLES: &str = r#"e.g. "30m", "1h30m", "45s", "500ms""#;
const UNITS: &str = "ns, us, µs, ms, s, m, h";

/// Parses a Go-syntax duration: one or more `<number><unit>` parts, units `ns`,
/// `us` (or `µs`), `ms`, `s`, `m`, `h`, numbers optionally with a fraction
/// (`1.5h`). A bare `0` is zero.
///
/// Rejects, with a message naming the problem: an empty string, a negative
/// value, a missing or unknown unit (days are not a unit: write `24h`), and
/// anything above Go's limit of about 292 years.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let input = s.trim();
    if input.is_empty() {
        return Err(format!("empty duration ({EXAMPLES})"));
    }
    if input.starts_with('-') {
        return Err(format!(
            "negative duration {input:?} is not allowed ({EXAMPLES})"
        ));
    }
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {input:?} ({EXAMPLES})"));
    }

    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int_part, after_int) = split_digits(rest);
        let (frac_part, after_frac) = match after_int.strip_prefix('.') {
            Some(after_dot) => split_digits(after_dot),
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(match after_frac.chars().next() {
                Some(c) if c.is_alphabetic() => {
                    format!(
                        "invalid duration {input:?}: expected a number before {c:?} ({EXAMPLES})"
                    )
                }
                Some(c) => format!("invalid duration {input:?}: unexpected character {c:?}"),
                None => format!("invalid duration {input:?} ({EXAMPLES})"),
            });
        }

        let unit_len = after_frac
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after_frac.len());
        let unit = &after_frac[..unit_len];
        rest = &after_frac[unit_len..];
        if let Some(c) = unit.chars().find(|c| !c.is_alphabetic()) {
            return Err(format!(
                "invalid duration {input:?}: unexpected character {c:?}"
            ));
        }
        let unit_nanos = match unit {
            "" => {
                return Err(format!(
                    "missing unit in duration {input:?} (valid units: {UNITS})"
                ));
            }
            "ns" => 1,
            "us" | "µs" | "μs" => NANOS_PER_MICRO,
            "ms" => NANOS_PER_MILLI,
            "s" => NANOS_PER_SECOND,
            "m" => NANOS_PER_MINUTE,
            "h" => NANOS_PER_HOUR,
            "d" | "w" | "y" => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {input:?} (valid units: {UNITS}; write a day as 24h)"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {input:?} (valid units: {UNITS})"
                ));
            }
        };

        let too_large = || format!("duration {input:?} is too large (the maximum is 2562047h)");
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut part = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
        if !frac_part.is_empty() {
            let digits = &frac_part[..frac_part.len().min(MAX_FRACTION_DIGITS)];
            let numerator: u128 = digits.parse().map_err(|_| too_large())?;
            let scale = 10u128.pow(digits.len() as u32);
            // Checked: a whole part just below the limit plus its fraction
            // overflowed here (a crash in debug builds, a wrap in release).
            part = part
                .checked_add(numerator * unit_nanos / scale)
                .ok_or_else(too_large)?;
        }
        total = total.checked_add(part).ok_or_else(too_large)?;
        if total > MAX_NANOS {
            return Err(too_large());
        }
    }
    // total ≤ i64::MAX, so it fits in u64.
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration as Go's `time.Duration.String()` does: `1h30m0s`,
/// `45s`, `1.5s`, `500ms`, `0s`. [`parse_duration`] reads every output back to
/// the same value.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < NANOS_PER_SECOND {
        let (unit, scale) = if nanos < NANOS_PER_MICRO {
            ("ns", 1)
        } else if nanos < NANOS_PER_MILLI {
            ("µs", NANOS_PER_MICRO)
        } else {
            ("ms", NANOS_PER_MILLI)
        };
        return format!("{}{}{unit}", nanos / scale, fraction(nanos % scale, scale));
    }

    let seconds = nanos / NANOS_PER_SECOND;
    let mut out = String::new();
    let minutes = seconds / 60;
    let hours = minutes / 60;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{}m", minutes % 60));
    }
    out.push_str(&format!(
        "{}{}s",
        seconds % 60,
        fraction(nanos % NANOS_PER_SECOND, NANOS_PER_SECOND)
    ));
    out
}

/// `.5`-style fraction of `remainder / scale` (scale a power of ten), without
/// trailing zeros; empty when the remainder is zero.
fn fraction(remainder: u128, scale: u128) -> String {
    if remainder == 0 {
        return String::new();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{remainder:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// The wait after failed attempt `attempt` (1-based): `first`, doubled
/// after each earlier attempt, capped at `max`. Never overflows.
pub fn doubling(first: Duration, attempt: u32, max: Duration) -> Duration {
    first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_first_up_to_the_cap_and_never_overflow() {
        let (first, max) = (Duration::from_millis(500), Duration::from_secs(10));
        let waits: Vec<u64> = (0..8)
            .map(|n| doubling(first, n, max).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(doubling(Duration::MAX, u32::MAX, max), max);
    }

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match parse_duration(s) {
            Ok(d) => panic!("{s:?} should be rejected, parsed as {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn single_units_parse_to_their_length() {
        assert_eq!(ok("30m"), Duration::from_secs(30 * 60));
        assert_eq!(ok("45s"), Duration::from_secs(45));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("168h"), Duration::from_secs(168 * 3600));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("3us"), Duration::from_micros(3));
        assert_eq!(ok("3µs"), Duration::from_micros(3));
        assert_eq!(ok("3μs"), Duration::from_micros(3));
    }

    #[test]
    fn parts_add_up_in_any_order() {
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("30m1h"), Duration::from_secs(5400));
        assert_eq!(ok("1h0m0s"), Duration::from_secs(3600));
        assert_eq!(ok("2h45m30s500ms"), Duration::from_millis(9_930_500));
    }

    #[test]
    fn fractions_scale_with_their_unit() {
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(
            ok("1.0000000000000000000000001h"),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn zero_needs_no_unit_but_other_numbers_do() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert!(err("30").contains("missing unit"));
    }

    #[test]
    fn surrounding_white_space_and_a_plus_sign_are_accepted() {
        assert_eq!(ok(" 30m\n"), Duration::from_secs(1800));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
    }

    #[test]
    fn empty_and_negative_durations_are_rejected() {
        assert!(err("").contains("empty duration"));
        assert!(err("   ").contains("empty duration"));
        assert!(err("-5m").contains("negative"));
        assert!(err("-0").contains("negative"));
        assert!(err("+").contains("invalid duration"));
    }

    #[test]
    fn unknown_units_are_named_and_days_get_a_hint() {
        let e = err("7d");
        assert!(e.contains(r#"unknown unit "d""#), "{e}");
        assert!(e.contains("24h"), "{e}");
        assert!(err("5sec").contains(r#"unknown unit "sec""#));
        assert!(err("5M").contains(r#"unknown unit "M""#));
    }

    #[test]
    fn malformed_input_says_which_character_is_wrong() {
        assert!(err("1h 30m").contains("unexpected character ' '"));
        assert!(err("h").contains("expected a number"));
        assert!(err("abc").contains("expected a number"));
        assert!(err("1h-5m").contains("unexpected character '-'"));
        assert!(err("１m").contains("unexpected character '１'"));
        assert!(err("5m.").contains("invalid duration"));
    }

    #[test]
    fn a_whole_part_just_below_the_u128_limit_plus_a_fraction_is_too_large_not_a_crash() {
        // Crash-looped the operator as an Ingress `timeout` annotation.
        let e = parse_duration("94522879700260684295381835.999999999999999999h").unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn values_beyond_gos_limit_are_rejected_without_panicking() {
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));
        assert!(err("2562048h").contains("too large"));
        assert!(err("9999999999999999999999999999999999999999h").contains("too large"));
        assert!(err("2562047h47m17s").contains("too large"));
    }

    #[test]
    fn formatting_matches_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1_100), "1.1µs"),
            (Duration::from_micros(2_200), "2.2ms"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(1800), "30m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(168 * 3600), "168h0m0s"),
            (Duration::new(3661, 1), "1h1m1.000000001s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn formatted_durations_parse_back_to_the_same_value() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_nanos(123_456_789),
            Duration::from_millis(10_001),
            Duration::new(7 * 24 * 3600 + 5, 250_000_000),
        ] {
            assert_eq!(ok(&format_duration(d)), d);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        /// Any text: an error or a duration within Go's limit, never a panic.
        #[test]
        fn any_text_parses_or_fails_without_panicking(s in "\\PC{0,40}") {
            if let Ok(d) = parse_duration(&s) {
                prop_assert!(d.as_nanos() <= MAX_NANOS);
            }
        }

        /// Numbers of any size with any unit and fraction, the shapes that
        /// reach the arithmetic.
        #[test]
        fn huge_numbers_with_fractions_fail_as_too_large_not_by_overflow(
            whole in "[0-9]{1,40}",
            fraction in "[0-9]{0,30}",
            unit in prop_oneof![Just("ns"), Just("us"), Just("ms"), Just("s"), Just("m"), Just("h")],
            repeat in 1usize..4,
        ) {
            let part = if fraction.is_empty() { format!("{whole}{unit}") } else { format!("{whole}.{fraction}{unit}") };
            let s = part.repeat(repeat);
            match parse_duration(&s) {
                Ok(d) => prop_assert!(d.as_nanos() <= MAX_NANOS),
                Err(e) => prop_assert!(e.contains("too large"), "{s}: {e}"),
            }
        }
    }
}
