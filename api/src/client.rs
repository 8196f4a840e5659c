//! Who the client is, for rate limits and logs: the peer address, or, when
//! the peer is a trusted proxy, the address it forwarded.
//!
//! `X-Forwarded-For` is read only from a peer in `--trusted-proxies`: from
//! anyone else it is a header the client wrote, and believing it would give
//! every request a bucket of its own. Read from the right: each proxy
//! appends the address it got the request from, so the right-most address
//! that is not a trusted proxy is the client (what is left of it, the client
//! may have written itself).
//!
//! A limit counts an IPv4 client by its address and an IPv6 client by its
//! /64 ([`ClientKey`]): one host usually holds a whole /64, so keying by
//! address would give it 2^64 buckets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The forwarded-for header.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Most addresses of `X-Forwarded-For` looked at: a longer chain of
/// trusted proxies is not a deployment, it is a made-up header.
const HOPS_MAX: usize = 16;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Proxies in `networks` (an address is a /32 or /128).
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    /// Whether `address` is a trusted proxy.
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// The client's address: `peer`, or the right-most address of
    /// `X-Forwarded-For` that is not a trusted proxy when `peer` is one.
    /// An entry that does not parse ends the walk at the proxy that sent it.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        let values = headers.get_all(X_FORWARDED_FOR).iter().filter_map(|value| value.to_str().ok());
        let mut hops: Vec<&str> = values.flat_map(|value| value.split(',')).collect();
        let mut looked = 0;
        while let Some(hop) = hops.pop() {
            if looked == HOPS_MAX {
                break;
            }
            looked += 1;
            let Ok(address) = hop.trim().parse::<IpAddr>() else { break };
            client = canonical(address);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// What a per-client limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 client.
    V4(Ipv4Addr),
    /// An IPv6 client's /64: the address's top 64 bits.
    V6Network(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(address: IpAddr) -> Self {
        match canonical(address) {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => ClientKey::V6Network((v6.to_bits() >> 64) as u64),
        }
    }
}

/// The client's address, as [`client_address`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Finds the client's address once per request and keeps it in the
/// request's extensions, where the rate limits and handlers read it.
pub async fn client_address(
    State(trusted): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip());
    if let Some(peer) = peer {
        let client = trusted.client_ip(peer, request.headers());
        request.extensions_mut().insert(ClientIp(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().filter_map(|n| n.parse().ok()).collect())
    }

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_static(value));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.1/32"]);
        let cases = [
            // (peer, X-Forwarded-For values, client)
            ("198.51.100.9", vec!["203.0.113.5"], "198.51.100.9"),
            ("10.1.1.1", vec!["203.0.113.5"], "203.0.113.5"),
            ("10.1.1.1", vec!["6.6.6.6, 203.0.113.5, 10.9.9.9"], "203.0.113.5"),
            ("10.1.1.1", vec!["6.6.6.6", "203.0.113.5, 192.0.2.1"], "203.0.113.5"),
            ("10.1.1.1", vec!["10.2.2.2"], "10.2.2.2"),
            ("10.1.1.1", vec!["garbage, 203.0.113.5"], "203.0.113.5"),
            ("10.1.1.1", vec!["203.0.113.5, garbage"], "10.1.1.1"),
            ("10.1.1.1", vec![], "10.1.1.1"),
            ("::ffff:10.1.1.1", vec!["2001:db8::1"], "2001:db8::1"),
        ];
        for (peer, values, client) in cases {
            assert_eq!(trusted.client_ip(ip(peer), &forwarded(&values)), ip(client), "{peer} {values:?}");
        }
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.1.1.1"), &forwarded(&["1.2.3.4"])),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |text: &str| ClientKey::from(ip(text));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}
