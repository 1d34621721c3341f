//! The target availability check before admission: concurrent TCP
//! connects with a short timeout. A TCP handshake is enough to know something
//! answers; TLS is not verified (nor even started), since self-signed targets
//! are common and nuclei itself decides what to do with them.

use std::time::Duration;

use futures::future::join_all;
use std::net::SocketAddr;

use tokio::net::{TcpStream, lookup_host};

use crate::target_policy::TargetPolicy;

/// The host (IPv6 in brackets) and port of an http(s) URL, the port from
/// its scheme when it names none; `None` when it has no scheme, no host or
/// a port that is not a number.
pub fn host_and_port(target: &str) -> Option<(&str, u16)> {
    let p = crate::url::parse(target);
    let scheme = p.scheme?;
    if p.host.is_empty() {
        return None;
    }
    let port = match p.port {
        None | Some("") if scheme.eq_ignore_ascii_case("https") => 443,
        None | Some("") => 80,
        Some(_) => p.port_number()?,
    };
    Some((p.host, port))
}

/// `host:port` of an http(s) URL (see [`host_and_port`]).
pub fn socket_of(target: &str) -> Option<String> {
    host_and_port(target).map(|(host, port)| format!("{host}:{port}"))
}

/// Whether at least one target accepts a TCP connection within `timeout`.
///
/// Connects to no address `policy` refuses: a target that resolves to one
/// counts as answering, so the scanner runs and records the refusal on the
/// scan instead of the scan waiting for a target it will never scan.
pub async fn any_target_answers(
    targets: &[String],
    timeout: Duration,
    policy: &TargetPolicy,
) -> bool {
    if targets
        .iter()
        .any(|t| policy.refuse_target_host(t).is_some())
    {
        return true;
    }
    let mut sockets: Vec<String> = targets.iter().filter_map(|t| socket_of(t)).collect();
    sockets.sort();
    sockets.dedup();
    let checks = sockets.into_iter().map(|s| async move {
        let attempt = async {
            let addrs: Vec<SocketAddr> = lookup_host(s.as_str()).await.ok()?.collect();
            if addrs.iter().any(|a| policy.refuse_addr(a.ip()).is_some()) {
                return Some(true);
            }
            Some(TcpStream::connect(addrs.as_slice()).await.is_ok())
        };
        matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
    });
    join_all(checks).await.into_iter().any(|ok| ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_default_to_the_scheme_port() {
        assert_eq!(
            socket_of("https://a.example.com/x").as_deref(),
            Some("a.example.com:443")
        );
        assert_eq!(
            socket_of("http://a.example.com").as_deref(),
            Some("a.example.com:80")
        );
        assert_eq!(socket_of("http://a:8080/p?q").as_deref(), Some("a:8080"));
        assert_eq!(socket_of("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(
            socket_of("http://u@[::1]:8080/").as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(socket_of("http://a:/").as_deref(), Some("a:80"));
        assert_eq!(socket_of("nonsense"), None);
        assert_eq!(socket_of("http:///p"), None);
        assert_eq!(socket_of("http://a:99999/"), None);
    }

    #[tokio::test]
    async fn a_listening_target_answers_and_a_closed_port_does_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = format!("http://127.0.0.1:{}/", l.local_addr().unwrap().port());
        let closed = {
            let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}/", l2.local_addr().unwrap().port())
        };
        let t = Duration::from_secs(2);
        let p = TargetPolicy::allow_all();
        assert!(any_target_answers(&[closed.clone(), open], t, &p).await);
        assert!(!any_target_answers(std::slice::from_ref(&closed), t, &p).await);
        // Refused addresses are not connected to, and left to the scanner.
        let deny = TargetPolicy::default();
        assert!(any_target_answers(&[closed], t, &deny).await);
    }
}
