//! The client address that `allow_ips` checks: the TCP peer, or — only when the peer is a
//! trusted proxy — the address the proxies report in `Forwarded` / `X-Forwarded-For`.
//!
//! The chain is read right to left (the right end was written by the proxy nearest to us)
//! and trusted hops are skipped, so a client cannot inject an address by sending its own
//! `X-Forwarded-For`: whatever it wrote lies left of the first untrusted hop.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client address of a request from `peer`.
pub fn address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in chain(headers).iter().rev() {
        // An unreadable hop ("unknown", an obfuscated name) ends what we can know: the last
        // address we could read stands.
        let Some(ip) = hop else { return client };
        client = canonical(*ip);
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; allowlists are written
/// with plain IPv4 networks.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The forwarded-for chain, leftmost (farthest) first: RFC 7239 `Forwarded` when present,
/// else `X-Forwarded-For`. Every instance of the header counts, in order.
fn chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("unknown").to_owned())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| node_ip(v.trim().trim_matches('"')))
                })?
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|hop| node_ip(hop.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse().ok().or_else(|| {
        let (host, port) = node.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn with(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_change_nothing() {
        let h = with("x-forwarded-for", &["10.9.9.9"]);
        assert_eq!(
            address(ip("203.0.113.5"), &h, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.5")
        );
        assert_eq!(address(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn the_chain_is_read_right_to_left_skipping_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the proxy at 10.0.0.2 appended the real peer.
        let h = with("x-forwarded-for", &["1.1.1.1, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(address(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        let h = with("x-forwarded-for", &["10.0.0.3"]);
        assert_eq!(address(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.3"));
        let h = with("x-forwarded-for", &["198.51.100.7, unknown"]);
        assert_eq!(address(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn rfc_7239_forwarded_takes_precedence_and_ports_and_brackets_are_dropped() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = with(
            "forwarded",
            &[r#"for=192.0.2.60;proto=http, For="[2001:db8:cafe::17]:4711""#],
        );
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.9"));
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted),
            ip("2001:db8:cafe::17")
        );
        let h = with("forwarded", &["for=192.0.2.60:8080"]);
        assert_eq!(
            address(ip("::ffff:10.0.0.1"), &h, &trusted),
            ip("192.0.2.60")
        );
    }
}
