//! Which hosts and addresses a scan may reach (issue #11, finding 4).
//!
//! Scanning is server-side request forgery by design: whoever can write an
//! Ingress host makes the scanner send requests there. The policy keeps
//! scanners away from what a namespace user must not reach through them:
//! cloud metadata and other link-local addresses, loopback, and
//! cluster-internal names.
//!
//! A target is refused when its host name ends in a denied suffix and no
//! allowed suffix, or when one of its addresses (the host itself when it is
//! an IP literal, else every address it resolves to) lies in a denied CIDR
//! and in no allowed one. Allow entries are exceptions to deny entries; to
//! scan only some ranges, deny `0.0.0.0/0,::/0` and allow those ranges.
//!
//! The check runs twice: on names and IP literals when a source's targets are
//! derived (the refusal is reported on the source), and on resolved addresses
//! in the scanner right before nuclei starts (and in the operator's
//! reachability check, which connects to no refused address). It does not
//! stop DNS rebinding between that check and nuclei's own lookup; a
//! NetworkPolicy on scanner pods does.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Default TARGET_DENY_CIDRS: loopback, "this network", link-local (cloud
/// metadata at 169.254.169.254) and AWS's IPv6 metadata address.
pub const DEFAULT_DENY_CIDRS: &str =
    "127.0.0.0/8,::1/128,0.0.0.0/8,::/128,169.254.0.0/16,fe80::/10,fd00:ec2::254/128";
/// Default TARGET_DENY_HOST_SUFFIXES: cluster-internal names.
pub const DEFAULT_DENY_HOST_SUFFIXES: &str = "svc,cluster.local,localhost";

const DENIED_BY: &str = "denied by TARGET_DENY_CIDRS (TARGET_ALLOW_CIDRS can allow it)";

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the network. IPv4-mapped IPv6 addresses
    /// (`::ffff:169.254.169.254`) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl Cidr {
    /// Whether every address of `other` lies in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix
            && self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.contains(other.addr)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `address/prefix`, or a bare address (a single host). The address must
    /// be the network's first one, so `10.0.0.1/8` is refused as a likely typo.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR (such as 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        let first = Cidr {
            addr: network(addr, prefix),
            prefix,
        };
        if first != cidr {
            return Err(format!("{s:?} has host bits set; the network is {first}"));
        }
        Ok(cidr)
    }
}

fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    fn mask(octets: &mut [u8], prefix: u8) {
        for (i, o) in octets.iter_mut().enumerate() {
            let keep = (i32::from(prefix) - 8 * i as i32).clamp(0, 8) as u32;
            *o &= (0xffu16 << (8 - keep)) as u8;
        }
    }
    match addr {
        IpAddr::V4(a) => {
            let mut o = a.octets();
            mask(&mut o, prefix);
            IpAddr::from(o)
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            mask(&mut o, prefix);
            IpAddr::from(o)
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A host-name suffix matched on label boundaries: `cluster.local` matches
/// `cluster.local` and `web.ns.svc.cluster.local`, not `mycluster.local`.
pub fn parse_host_suffix(s: &str) -> Result<String, String> {
    let t = s.trim().trim_start_matches("*.").trim_start_matches('.');
    let t = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
    let ok = !t.is_empty()
        && t.len() <= 253
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(t)
    } else {
        Err(format!(
            "{s:?} is not a host-name suffix (such as cluster.local)"
        ))
    }
}

/// TARGET_DENY_CIDRS, TARGET_ALLOW_CIDRS, TARGET_DENY_HOST_SUFFIXES and
/// TARGET_ALLOW_HOST_SUFFIXES together. Serialized as JSON into the scanner
/// Job's `TARGET_POLICY`, so pod and operator apply the same policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPolicy {
    pub deny_cidrs: Vec<Cidr>,
    pub allow_cidrs: Vec<Cidr>,
    pub deny_host_suffixes: Vec<String>,
    pub allow_host_suffixes: Vec<String>,
}

impl Default for TargetPolicy {
    /// The built-in defaults, as the settings give them.
    fn default() -> Self {
        TargetPolicy {
            deny_cidrs: DEFAULT_DENY_CIDRS
                .split(',')
                .map(|c| c.parse().expect("valid default CIDR"))
                .collect(),
            allow_cidrs: vec![],
            deny_host_suffixes: DEFAULT_DENY_HOST_SUFFIXES
                .split(',')
                .map(str::to_owned)
                .collect(),
            allow_host_suffixes: vec![],
        }
    }
}

fn suffix_matches(host: &str, suffix: &str) -> bool {
    host == suffix
        || host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl TargetPolicy {
    /// A policy that refuses nothing (tests, and what `0.0.0.0/0,::/0` in
    /// TARGET_ALLOW_CIDRS with no denied suffix amounts to).
    pub fn allow_all() -> Self {
        TargetPolicy {
            deny_cidrs: vec![],
            allow_cidrs: vec![],
            deny_host_suffixes: vec![],
            allow_host_suffixes: vec![],
        }
    }

    /// Why `host` (as in a target URL: IPv6 literals may keep their
    /// brackets; any case, one trailing dot) is refused by name, or `None`.
    /// IP literals are checked as addresses. Refused too: a numeric host that
    /// is not a dotted-quad IPv4 address (`2852039166`, `0xa9fea9fe`,
    /// `0251.0376.1`), which resolvers read as IP addresses in other forms,
    /// and a bracketed host that is not a plain IPv6 literal (a zone,
    /// `[fe80::1%25eth0]`).
    pub fn refuse_host(&self, host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if let Some(inner) = host.strip_prefix('[') {
            return match inner.strip_suffix(']').map(str::parse::<IpAddr>) {
                Some(Ok(ip)) => self.refuse_addr(ip),
                _ => Some(format!("{host} is not a plain IPv6 literal")),
            };
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.refuse_addr(ip);
        }
        if host.contains('%') {
            return Some(format!("{host} holds a '%', which no host name does"));
        }
        let last = host.rsplit('.').next().unwrap_or(host);
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if numeric {
            return Some(format!(
                "{host} is a numeric host that is not a dotted-quad IPv4 address; resolvers may read it as any IP address"
            ));
        }
        let denied = self
            .deny_host_suffixes
            .iter()
            .find(|s| suffix_matches(host, s))?;
        if self
            .allow_host_suffixes
            .iter()
            .any(|s| suffix_matches(host, s))
        {
            return None;
        }
        Some(format!(
            "{host} is a cluster-internal or local name (suffix {denied} in TARGET_DENY_HOST_SUFFIXES; TARGET_ALLOW_HOST_SUFFIXES can allow it)"
        ))
    }

    /// The denied network holding `ip`, unless an allowed one holds it too.
    fn denied_net(&self, ip: IpAddr) -> Option<Cidr> {
        let ip = ip.to_canonical();
        let denied = self.deny_cidrs.iter().find(|c| c.contains(ip))?;
        (!self.allow_cidrs.iter().any(|c| c.contains(ip))).then_some(*denied)
    }

    /// Whether some address would be refused: not when every denied
    /// network is allowed again (`0.0.0.0/0,::/0` in TARGET_ALLOW_CIDRS),
    /// and then no name needs resolving.
    pub fn refuses_any_address(&self) -> bool {
        self.deny_cidrs
            .iter()
            .any(|d| !self.allow_cidrs.iter().any(|a| a.covers(d)))
    }

    /// Why `ip` is refused, or `None`.
    pub fn refuse_addr(&self, ip: IpAddr) -> Option<String> {
        let net = self.denied_net(ip)?;
        Some(format!("{} is in {net}, {DENIED_BY}", ip.to_canonical()))
    }

    /// Why a host that resolved to `addrs` is refused, or `None`: refused
    /// when any of its addresses is, since a client may connect to any.
    pub fn refuse_resolved(&self, host: &str, addrs: &[IpAddr]) -> Option<String> {
        addrs.iter().find_map(|ip| {
            let net = self.denied_net(*ip)?;
            Some(format!(
                "{host} resolves to {}, which is in {net}, {DENIED_BY}",
                ip.to_canonical()
            ))
        })
    }

    /// Why the host of `target` (an http(s) URL) is refused by name or as
    /// an IP literal, or `None`.
    pub fn refuse_target_host(&self, target: &str) -> Option<String> {
        let (host, _) = crate::scan::probe::host_and_port(target)?;
        self.refuse_host(host)
    }

    /// Resolves the host of `target` (an http(s) URL) and checks it by name
    /// and address. A host that does not resolve is not refused: nuclei will
    /// find it unreachable, which is no policy matter. A name that resolves
    /// after one of the DNS `search` domains (`kubernetes.default` +
    /// `svc.cluster.local`) is refused: a resolver that tries the search list
    /// reaches a cluster-internal name through it.
    pub async fn check_target(&self, target: &str, search: &[String]) -> Result<(), String> {
        self.check_target_with(target, search, |socket| async move {
            tokio::net::lookup_host(socket)
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .unwrap_or_default()
        })
        .await
    }

    /// [`Self::check_target`] with `resolve` (`host:port` → addresses, none
    /// when it does not resolve).
    async fn check_target_with<F, Fut>(
        &self,
        target: &str,
        search: &[String],
        resolve: F,
    ) -> Result<(), String>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Vec<IpAddr>>,
    {
        let Some((host, port)) = crate::scan::probe::host_and_port(target) else {
            return Err(format!(
                "{target} is not an http(s) URL whose host can be checked"
            ));
        };
        if let Some(why) = self.refuse_host(host) {
            return Err(why);
        }
        let socket = format!("{host}:{port}");
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let literal = host.starts_with('[') || host.parse::<IpAddr>().is_ok();
        for domain in search.iter().filter(|_| !literal) {
            let expanded = format!("{host}.{domain}");
            let allowed = self
                .allow_host_suffixes
                .iter()
                .any(|s| suffix_matches(&expanded, s));
            if !allowed && !resolve(format!("{expanded}:{port}")).await.is_empty() {
                return Err(format!(
                    "{host} resolves through the DNS search list as {expanded}, a cluster-internal name (TARGET_ALLOW_HOST_SUFFIXES can allow it)"
                ));
            }
        }
        if !self.refuses_any_address() {
            return Ok(());
        }
        let addrs = resolve(socket).await;
        match self.refuse_resolved(&host, &addrs) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// The domains of the `search` (or older `domain`) line of a resolv.conf:
/// what a resolver appends to names with fewer dots than `ndots`.
pub fn search_domains(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            matches!(words.next(), Some("search" | "domain")).then_some(words)
        })
        .next_back()
        .map(|w| {
            w.map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_refuse_what_is_not_a_network() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("fd00:ec2::254").to_string(), "fd00:ec2::254/128");
        assert_eq!(cidr(" ::/0 ").to_string(), "::/0");
        for (bad, says) in [
            ("10.0.0.1/8", "the network is 10.0.0.0/8"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/-1", "0 to 32"),
            ("example.com", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let c = cidr("169.254.0.0/16");
        assert!(c.contains("169.254.169.254".parse().unwrap()));
        assert!(!c.contains("169.253.255.255".parse().unwrap()));
        assert!(c.contains("::ffff:169.254.169.254".parse().unwrap()));
        assert!(!c.contains("fe80::1".parse().unwrap()));
        let odd = cidr("10.0.0.0/9");
        assert!(odd.contains("10.127.255.255".parse().unwrap()));
        assert!(!odd.contains("10.128.0.0".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(cidr("fe80::/10").contains("febf::1".parse().unwrap()));
        assert!(!cidr("fe80::/10").contains("fec0::1".parse().unwrap()));
    }

    #[test]
    fn the_defaults_refuse_metadata_loopback_and_cluster_names() {
        let p = TargetPolicy::default();
        for host in [
            "169.254.169.254",
            "127.0.0.1",
            "[::1]",
            "[fd00:ec2::254]",
            "[::ffff:169.254.169.254]",
            "0.0.0.0",
            "web.default.svc",
            "web.default.svc.cluster.local",
            "localhost",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
        ] {
            assert!(p.refuse_host(host).is_some(), "{host} should be refused");
        }
        for host in [
            "example.com",
            "10.0.0.1",
            "[2001:db8::1]",
            "mycluster.local",
            "svc.example.com",
            "app.localhost.example",
            "1password.com",
        ] {
            assert_eq!(p.refuse_host(host), None, "{host}");
        }
        let why = p.refuse_host("web.default.svc.cluster.local").unwrap();
        assert!(why.contains("TARGET_DENY_HOST_SUFFIXES"), "{why}");
        let why = p.refuse_host("169.254.169.254").unwrap();
        assert!(
            why.contains("169.254.0.0/16") && why.contains("TARGET_ALLOW_CIDRS"),
            "{why}"
        );
    }

    #[test]
    fn allow_entries_are_exceptions_to_deny_entries() {
        let p = TargetPolicy {
            allow_cidrs: vec![cidr("127.0.0.0/24")],
            allow_host_suffixes: vec!["demo.svc.cluster.local".into()],
            ..TargetPolicy::default()
        };
        assert_eq!(p.refuse_host("127.0.0.9"), None);
        assert!(p.refuse_host("127.0.1.1").is_some());
        assert_eq!(p.refuse_host("web.demo.svc.cluster.local"), None);
        assert!(p.refuse_host("web.other.svc.cluster.local").is_some());
        // Only some ranges: deny everything, allow those.
        let only = TargetPolicy {
            deny_cidrs: vec![cidr("0.0.0.0/0"), cidr("::/0")],
            allow_cidrs: vec![cidr("203.0.113.0/24")],
            ..TargetPolicy::allow_all()
        };
        assert_eq!(only.refuse_addr("203.0.113.7".parse().unwrap()), None);
        assert!(only.refuse_addr("198.51.100.1".parse().unwrap()).is_some());
        assert!(only.refuse_addr("2001:db8::1".parse().unwrap()).is_some());
    }

    #[test]
    fn a_name_resolving_to_any_denied_address_is_refused() {
        let p = TargetPolicy::default();
        let ok: IpAddr = "93.184.215.14".parse().unwrap();
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        assert_eq!(p.refuse_resolved("a.example", &[ok]), None);
        let why = p.refuse_resolved("a.example", &[ok, meta]).unwrap();
        assert!(
            why.starts_with("a.example resolves to 169.254.169.254"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn targets_are_checked_by_name_then_by_their_resolved_addresses() {
        let p = TargetPolicy::default();
        let e = p
            .check_target("http://127.0.0.1:8080/x", &[])
            .await
            .unwrap_err();
        assert!(e.contains("127.0.0.0/8"), "{e}");
        let e = p.check_target("https://localhost/", &[]).await.unwrap_err();
        assert!(e.contains("TARGET_DENY_HOST_SUFFIXES"), "{e}");
        let mut allowed = p.clone();
        allowed.allow_cidrs = vec![cidr("127.0.0.0/8")];
        assert_eq!(
            allowed.check_target("http://127.0.0.1:8080/", &[]).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_short_name_the_search_list_turns_into_a_cluster_name_is_refused() {
        let p = TargetPolicy::default();
        let search = search_domains(
            "nameserver 10.96.0.10\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(
            search,
            [
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        // A fake resolver: the cluster answers kubernetes.default.svc.cluster.local,
        // the world answers example.com.
        let resolve = |socket: String| async move {
            match socket.rsplit_once(':').unwrap().0 {
                "kubernetes.default.svc.cluster.local" => vec!["10.96.0.1".parse().unwrap()],
                "example.com" => vec!["93.184.215.14".parse().unwrap()],
                "rebind.example" => vec!["169.254.169.254".parse().unwrap()],
                _ => vec![],
            }
        };
        let e = p
            .check_target_with("https://Kubernetes.Default/", &search, resolve)
            .await
            .unwrap_err();
        assert!(e.contains("kubernetes.default.svc.cluster.local"), "{e}");
        assert_eq!(
            p.check_target_with("https://example.com/", &search, resolve)
                .await,
            Ok(())
        );
        let e = p
            .check_target_with("http://rebind.example/", &search, resolve)
            .await
            .unwrap_err();
        assert!(
            e.contains("rebind.example resolves to 169.254.169.254, which is in 169.254.0.0/16"),
            "{e}"
        );
        // Unresolvable: nuclei's to report; unparsable: refused.
        assert_eq!(
            p.check_target_with("http://gone.example/", &search, resolve)
                .await,
            Ok(())
        );
        assert!(
            p.check_target_with("nonsense", &search, resolve)
                .await
                .is_err()
        );
        let allowed = TargetPolicy {
            allow_host_suffixes: vec!["default.svc.cluster.local".into()],
            ..TargetPolicy::default()
        };
        assert_eq!(
            allowed
                .check_target_with("https://kubernetes.default/", &search, resolve)
                .await,
            Ok(())
        );
        assert!(search_domains("nameserver 1.1.1.1\n").is_empty());
    }

    #[tokio::test]
    async fn a_policy_that_allows_every_address_resolves_nothing() {
        let all: Vec<Cidr> = vec![cidr("0.0.0.0/0"), cidr("::/0")];
        let open = TargetPolicy {
            allow_cidrs: all,
            ..TargetPolicy::default()
        };
        assert!(!open.refuses_any_address());
        assert!(TargetPolicy::default().refuses_any_address());
        let half = TargetPolicy {
            allow_cidrs: vec![cidr("0.0.0.0/0")],
            ..TargetPolicy::default()
        };
        assert!(half.refuses_any_address(), "the IPv6 networks stay denied");
        let resolve = |socket: String| async move { panic!("resolved {socket}") };
        assert_eq!(
            open.check_target_with("http://a.lt.test/", &[], resolve)
                .await,
            Ok(())
        );
        assert!(cidr("10.0.0.0/8").covers(&cidr("10.1.0.0/16")));
        assert!(!cidr("10.1.0.0/16").covers(&cidr("10.0.0.0/8")));
        assert!(!cidr("0.0.0.0/0").covers(&cidr("::/0")));
    }

    #[test]
    fn names_are_compared_in_any_case_and_zones_or_odd_brackets_are_refused() {
        let p = TargetPolicy::default();
        for host in [
            "WEB.NS.SVC.CLUSTER.LOCAL",
            "web.ns.svc.cluster.local.",
            "[::ffff:169.254.169.254%25eth0]",
            "[fe80::1%eth0]",
            "[not-an-ip]",
            "web%2esvc",
        ] {
            assert!(p.refuse_host(host).is_some(), "{host} should be refused");
        }
        assert_eq!(p.refuse_host("[2001:db8::1]"), None);
        assert_eq!(p.refuse_host("Example.COM."), None);
    }

    #[test]
    fn host_suffixes_are_normalized_and_checked() {
        assert_eq!(
            parse_host_suffix("*.Cluster.Local.").unwrap(),
            "cluster.local"
        );
        assert_eq!(parse_host_suffix(".svc").unwrap(), "svc");
        assert!(parse_host_suffix("a..b").is_err());
        assert!(parse_host_suffix("").is_err());
        assert!(parse_host_suffix("a b").is_err());
    }

    #[test]
    fn the_policy_round_trips_through_the_job_env() {
        let p = TargetPolicy {
            allow_cidrs: vec![cidr("127.0.0.0/8")],
            ..TargetPolicy::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""allowCidrs":["127.0.0.0/8"]"#), "{json}");
        assert_eq!(serde_json::from_str::<TargetPolicy>(&json).unwrap(), p);
        assert!(serde_json::from_str::<TargetPolicy>(r#"{"denyCidrs":["x"],"allowCidrs":[],"denyHostSuffixes":[],"allowHostSuffixes":[]}"#).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_network_contains_exactly_the_addresses_sharing_its_prefix(
            net in any::<u32>(), ip in any::<u32>(), prefix in 0u8..=32
        ) {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            let c: Cidr = format!("{}/{prefix}", std::net::Ipv4Addr::from(net & mask)).parse().unwrap();
            let ip = IpAddr::from(std::net::Ipv4Addr::from(ip));
            prop_assert_eq!(c.contains(ip), u32::from_be_bytes(match ip { IpAddr::V4(a) => a.octets(), _ => unreachable!() }) & mask == net & mask);
        }

        #[test]
        fn no_host_or_cidr_text_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Cidr>();
            let _ = parse_host_suffix(&s);
            let _ = TargetPolicy::default().refuse_host(&s);
        }
    }
}
