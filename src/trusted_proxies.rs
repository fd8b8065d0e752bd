//! `ZDM_TRUSTED_PROXIES`: the reverse proxies whose `X-Forwarded-For` and
//! `X-Forwarded-Proto` are believed. From any other peer those headers are ignored: anyone can
//! send them, and believing them would let a client choose the address its failed log-ins are
//! counted under, or make the app treat plain HTTP as HTTPS.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The networks (CIDRs) of the trusted proxies; empty by default: no proxy is trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

/// Who sent a request, as far as it can be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address: the peer's, or the one a trusted proxy says it forwarded for.
    pub ip: IpAddr,
    /// Whether the client reached us over HTTPS (only a trusted proxy can say so; zdm itself
    /// serves plain HTTP).
    pub https: bool,
}

impl TrustedProxies {
    /// A comma-separated list of CIDRs (`10.0.0.0/8, 2001:db8::/32`) or single addresses.
    pub fn parse(list: &str) -> Result<Self, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{item:?} is not a CIDR such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Arc::new(nets)))
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer`. `forwarded_for` holds the `X-Forwarded-For`
    /// headers in order; `forwarded_proto` the first `X-Forwarded-Proto`. Both count only
    /// when the peer is trusted; then the client is the nearest address in the chain that is
    /// not itself a trusted proxy (addresses further left were written by whoever sent the
    /// request and prove nothing). A hop's port is dropped; a hop that names no address
    /// (`unknown`, empty) ends the walk at the proxy that wrote it.
    pub fn client(
        &self,
        peer: IpAddr,
        forwarded_for: &[&str],
        forwarded_proto: Option<&str>,
    ) -> ClientInfo {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return ClientInfo {
                ip: peer,
                https: false,
            };
        }
        let mut ip = peer;
        let hops = forwarded_for
            .iter()
            .flat_map(|header| header.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            // `unknown`, an empty hop or anything else that is no address: the proxy that
            // wrote it could not name its client, so that proxy is the client.
            let Some(hop) = hop_address(hop) else {
                break;
            };
            ip = hop.to_canonical();
            if !self.trusts(ip) {
                break;
            }
        }
        let https = forwarded_proto
            .and_then(|proto| proto.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        ClientInfo { ip, https }
    }
}

/// The address of one `X-Forwarded-For` hop, which proxies write as `198.51.100.50`,
/// `198.51.100.50:4444`, `2001:db8::1` or `[2001:db8::1]:80`: the port says nothing about
/// who the client is, and dropping it keeps such clients apart instead of counting them all
/// under their proxy.
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_and_single_addresses() {
        let proxies = TrustedProxies::parse(" 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,").unwrap();
        assert!(proxies.trusts(ip("10.1.2.3")));
        assert!(proxies.trusts(ip("192.0.2.7")));
        assert!(!proxies.trusts(ip("192.0.2.8")));
        assert!(proxies.trusts(ip("2001:db8::1")));
        assert!(proxies.trusts(ip("::ffff:10.0.0.1")), "IPv4-mapped");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
        assert!(!TrustedProxies::parse("").unwrap().trusts(ip("127.0.0.1")));
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let client = proxies.client(ip("203.0.113.5"), &["198.51.100.1"], Some("https"));
        assert_eq!(client.ip, ip("203.0.113.5"));
        assert!(!client.https);
    }

    #[test]
    fn hops_written_with_a_port_are_their_address() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = ip("10.0.0.2");
        for (hop, client) in [
            ("198.51.100.50:4444", "198.51.100.50"),
            ("[2001:db8::1]:80", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("198.51.100.50:4444, 10.0.0.1:8080", "198.51.100.50"),
        ] {
            assert_eq!(proxies.client(peer, &[hop], None).ip, ip(client), "{hop}");
        }
    }

    #[test]
    fn an_unknown_or_empty_hop_is_the_proxy_that_wrote_it() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = ip("10.0.0.2");
        for hops in [
            &["unknown"][..],
            &["Unknown"],
            &[""],
            &["  "],
            &["198.51.100.9, unknown"],
            &["198.51.100.9, "],
            &["198.51.100.9", ""],
        ] {
            assert_eq!(proxies.client(peer, hops, None).ip, peer, "{hops:?}");
        }
        // Written by the proxy in front of the peer: that proxy is the client.
        assert_eq!(
            proxies
                .client(peer, &["198.51.100.9, unknown, 10.0.0.1"], None)
                .ip,
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_nearest_untrusted_hop() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = ip("10.0.0.2");
        // The client prepended an address of its choice; the proxies appended the real one.
        let client = proxies.client(
            peer,
            &["1.2.3.4, 198.51.100.9", "10.0.0.1"],
            Some("https, http"),
        );
        assert_eq!(client.ip, ip("198.51.100.9"));
        assert!(client.https);
        assert_eq!(proxies.client(peer, &[], None).ip, peer);
        assert_eq!(
            proxies.client(peer, &["garbage, 10.0.0.7"], Some("http")),
            ClientInfo {
                ip: ip("10.0.0.7"),
                https: false
            },
            "an unreadable hop ends the walk at the last trusted one"
        );
    }
}
