//! The pieces of a URL the operator reads: scheme, host, port. One parser
//! for scan targets, finding URLs and exception patterns, so the host the
//! target policy checks is the host that is probed and scanned.

/// A URL (or `host[:port]` without a scheme) split into its pieces,
/// borrowed from the input and not normalised.
#[derive(Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The scheme when the input starts with one (`[a-z][a-z0-9+.-]*://`).
    pub scheme: Option<&'a str>,
    /// The host after any `user@`; an IPv6 literal keeps its brackets.
    pub host: &'a str,
    /// What follows the host's `:`, if anything does (not checked to be digits).
    pub port: Option<&'a str>,
    /// Path, query and fragment: from the first `/`, `?` or `#` on.
    pub tail: &'a str,
}

/// Splits `s`; never fails (a host may come out empty).
pub fn parse(s: &str) -> Parts<'_> {
    let (scheme, rest) = match scheme_end(s) {
        Some(i) => (Some(&s[..i]), &s[i + 3..]),
        None => (None, s),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if host_port.starts_with('[') {
        match host_port.find(']') {
            Some(i) => {
                let (host, after) = host_port.split_at(i + 1);
                (host, after.strip_prefix(':'))
            }
            None => (host_port, None),
        }
    } else if host_port.matches(':').count() > 1 {
        // An IPv6 address without brackets: it has no port.
        (host_port, None)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    Parts {
        scheme,
        host,
        port,
        tail,
    }
}

impl<'a> Parts<'a> {
    /// The host without the brackets of an IPv6 literal.
    pub fn bare_host(&self) -> &'a str {
        let h = self.host.strip_prefix('[').unwrap_or(self.host);
        h.strip_suffix(']').unwrap_or(h)
    }

    /// The port as a number, when there is one made of digits.
    pub fn port_number(&self) -> Option<u16> {
        self.port
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?
            .parse()
            .ok()
    }
}

/// Where the scheme of a URL ends (the index of its `://`), when `s` starts
/// with one (`[a-z][a-z0-9+.-]*://`).
pub fn scheme_end(s: &str) -> Option<usize> {
    let i = s.find("://")?;
    let scheme = &s.as_bytes()[..i];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    valid.then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts<'a>(
        scheme: Option<&'a str>,
        host: &'a str,
        port: Option<&'a str>,
        tail: &'a str,
    ) -> Parts<'a> {
        Parts {
            scheme,
            host,
            port,
            tail,
        }
    }

    #[test]
    fn urls_split_into_scheme_host_port_and_tail() {
        for (s, want) in [
            (
                "https://a.example.com/x?y#z",
                parts(Some("https"), "a.example.com", None, "/x?y#z"),
            ),
            (
                "http://u:p@a:8080?q",
                parts(Some("http"), "a", Some("8080"), "?q"),
            ),
            (
                "http://[::1]:80/p",
                parts(Some("http"), "[::1]", Some("80"), "/p"),
            ),
            ("http://[::1]", parts(Some("http"), "[::1]", None, "")),
            ("fe80::1", parts(None, "fe80::1", None, "")),
            (
                "a.example.com:443",
                parts(None, "a.example.com", Some("443"), ""),
            ),
            ("http://a:", parts(Some("http"), "a", Some(""), "")),
            ("1http://a", parts(None, "1http", Some(""), "//a")),
            ("", parts(None, "", None, "")),
        ] {
            assert_eq!(parse(s), want, "{s:?}");
        }
        assert_eq!(parse("http://[::1]:8080").bare_host(), "::1");
        assert_eq!(parse("http://a:8080").port_number(), Some(8080));
        for no_port in ["http://a", "http://a:", "http://a:x", "http://a:99999"] {
            assert_eq!(parse(no_port).port_number(), None, "{no_port:?}");
        }
    }

    proptest! {
        /// Whatever the input, the pieces are slices of it in order and the
        /// host holds no character that ends an authority.
        #[test]
        fn any_input_splits_without_panicking_into_its_own_pieces(s in ".{0,40}") {
            let p = parse(&s);
            prop_assert!(s.ends_with(p.tail));
            prop_assert!(!p.host.contains(['/', '?', '#', '@']));
            prop_assert!(s.contains(p.host));
        }
    }
}
