//! The client address that `allow_ips` checks: the TCP peer, or — only when the peer is a
//! trusted proxy — the address the proxies report in the one header the config names
//! (`server.forwarded_header`: `X-Forwarded-For` or RFC 7239 `Forwarded`).
//!
//! The chain is read right to left (the right end was written by the proxy nearest to us)
//! and trusted hops are skipped, so a client cannot inject an address by sending its own
//! header: whatever it wrote lies left of the first untrusted hop. The other header is never
//! read, because a proxy that appends to one passes the other through from the client.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::ForwardedHeader;

/// A hop of the chain could not be read (`unknown`, an obfuscated `_name`, garbage) before
/// an untrusted one: the client cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// The client address of a request from `peer`.
pub fn address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> Result<IpAddr, Unreadable> {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let mut client = peer;
    for hop in chain(headers, header).iter().rev() {
        client = canonical(hop.ok_or(Unreadable)?);
        if !is_trusted(&client) {
            return Ok(client);
        }
    }
    Ok(client)
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; allowlists are written
/// with plain IPv4 networks.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The forwarded-for chain of `header`, leftmost (farthest) first. Every instance of the
/// header counts, in order.
fn chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("unknown").to_owned())
            .collect()
    };
    match header {
        ForwardedHeader::Forwarded => values("forwarded")
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
            .collect(),
        ForwardedHeader::XForwardedFor => values("x-forwarded-for")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|hop| node_ip(hop.trim()))
            .collect(),
    }
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

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_change_nothing() {
        let h = with("x-forwarded-for", &["10.9.9.9"]);
        assert_eq!(
            address(ip("203.0.113.5"), &h, &nets(&["10.0.0.0/8"]), XFF),
            Ok(ip("203.0.113.5"))
        );
        assert_eq!(address(ip("10.0.0.1"), &h, &[], XFF), Ok(ip("10.0.0.1")));
    }

    #[test]
    fn the_chain_is_read_right_to_left_skipping_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the proxy at 10.0.0.2 appended the real peer.
        let h = with("x-forwarded-for", &["1.1.1.1, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted, XFF),
            Ok(ip("198.51.100.7"))
        );
        let h = with("x-forwarded-for", &["10.0.0.3"]);
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted, XFF),
            Ok(ip("10.0.0.3"))
        );
    }

    #[test]
    fn an_unreadable_hop_before_an_untrusted_one_makes_the_client_unknown() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = with("x-forwarded-for", &["198.51.100.7, unknown"]);
        assert_eq!(address(ip("10.0.0.1"), &h, &trusted, XFF), Err(Unreadable));
        let h = with("forwarded", &["for=unknown", "for=_hidden"]);
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            Err(Unreadable)
        );
        // Left of the first untrusted hop nothing is read, readable or not.
        let h = with("x-forwarded-for", &["unknown, 198.51.100.7"]);
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted, XFF),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = with(
            "forwarded",
            &[r#"for=192.0.2.60;proto=http, For="[2001:db8:cafe::17]:4711""#],
        );
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.9"));
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            Ok(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            address(ip("10.0.0.1"), &h, &trusted, XFF),
            Ok(ip("198.51.100.9"))
        );
        let h = with("forwarded", &["for=192.0.2.60:8080"]);
        assert_eq!(
            address(
                ip("::ffff:10.0.0.1"),
                &h,
                &trusted,
                ForwardedHeader::Forwarded
            ),
            Ok(ip("192.0.2.60"))
        );
        assert_eq!(
            address(ip("::ffff:10.0.0.1"), &h, &trusted, XFF),
            Ok(ip("10.0.0.1"))
        );
    }
}
