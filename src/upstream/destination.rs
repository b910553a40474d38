//! Where an export download may go. A result URL comes from upstream, so a compromised or
//! misconfigured upstream (or file server, through a redirect) could point the service at its
//! own network: a cloud metadata endpoint (169.254.169.254), an admin port on loopback, a
//! neighbour on 10.0.0.0/8. Downloads to such addresses are refused, unless the configured
//! upstream is itself in that address class (the emulator on loopback, an emulator or proxy on
//! the private network): then its own files live there.
//!
//! Names are checked after resolution, on every address, by the download client's resolver
//! (so a name that later re-resolves elsewhere is checked again on each new connection); IP
//! literals, which the connector does not resolve, are checked before the request.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::OnceCell;
use url::{Host, Url};

/// The kind of network an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressClass {
    /// Reachable on the internet.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, carrier-grade NAT (100.64.0.0/10), unique-local fc00::/7.
    Private,
    /// 169.254.0.0/16 (cloud metadata), fe80::/10.
    LinkLocal,
    /// 0.0.0.0, :: (reach the local host on most systems).
    Unspecified,
    /// Multicast, broadcast, documentation and other reserved ranges.
    Reserved,
}

impl AddressClass {
    /// The class of an address (an IPv4-mapped IPv6 address is classed as its IPv4 address).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of_v4(v4),
                None => Self::of_v6(v6),
            },
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Self {
        let [a, b, ..] = ip.octets();
        if ip.is_loopback() {
            Self::Loopback
        } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
            Self::Private
        } else if ip.is_link_local() {
            Self::LinkLocal
        } else if ip.is_unspecified() {
            Self::Unspecified
        } else if ip.is_multicast() || ip.is_broadcast() || ip.is_documentation() || a == 0 || a >= 240 {
            Self::Reserved
        } else {
            Self::Public
        }
    }

    fn of_v6(ip: Ipv6Addr) -> Self {
        if ip.is_loopback() {
            Self::Loopback
        } else if ip.is_unique_local() {
            Self::Private
        } else if ip.is_unicast_link_local() {
            Self::LinkLocal
        } else if ip.is_unspecified() {
            Self::Unspecified
        } else if ip.is_multicast() || (ip.segments()[0] == 0x2001 && ip.segments()[1] == 0x0db8) {
            Self::Reserved
        } else {
            Self::Public
        }
    }
}

/// A download destination that the policy refuses. Its message names the host and the
/// address class, never the URL (whose query is the signature).
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Which address classes a download may reach: public ones always, others only when the
/// configured upstream resolves to them (learnt on first use, then kept).
#[derive(Debug)]
pub struct DestinationPolicy {
    upstream: Url,
    upstream_classes: OnceCell<BTreeSet<AddressClass>>,
}

impl DestinationPolicy {
    /// The policy for a service whose upstream is `upstream`.
    pub fn new(upstream: Url) -> Self {
        Self { upstream, upstream_classes: OnceCell::new() }
    }

    /// A policy with the upstream's classes given rather than resolved (for tests).
    pub fn with_upstream_classes(upstream: Url, classes: impl IntoIterator<Item = AddressClass>) -> Self {
        Self { upstream, upstream_classes: OnceCell::new_with(Some(classes.into_iter().collect())) }
    }

    /// The classes the configured upstream's host resolves to. A failed lookup is not kept:
    /// meanwhile only public destinations pass.
    async fn upstream_classes(&self) -> BTreeSet<AddressClass> {
        let lookup = || async {
            let host = self.upstream.host().ok_or(())?;
            let port = self.upstream.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = match host {
                Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
                Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
                Host::Domain(name) => tokio::net::lookup_host((name, port)).await.map_err(drop)?.collect(),
            };
            Ok::<_, ()>(addrs.into_iter().map(|addr| AddressClass::of(addr.ip())).collect())
        };
        match self.upstream_classes.get_or_try_init(lookup).await {
            Ok(classes) => classes.clone(),
            Err(()) => BTreeSet::from([AddressClass::Public]),
        }
    }

    /// Whether `ip` (an address of `host`) may be downloaded from.
    pub async fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        let class = AddressClass::of(ip);
        if class == AddressClass::Public || self.upstream_classes().await.contains(&class) {
            return Ok(());
        }
        Err(Refused(format!(
            "the result URL's host {host} is a {class:?} address ({ip}), which downloads may not reach \
             (the configured upstream is not in that network)"
        )))
    }

    /// Checks a URL whose host is an IP literal (names are checked by [`CheckingResolver`]).
    pub async fn check_literal(&self, url: &Url) -> Result<(), Refused> {
        match url.host() {
            Some(Host::Ipv4(ip)) => self.check(&ip.to_string(), ip.into()).await,
            Some(Host::Ipv6(ip)) => self.check(&ip.to_string(), ip.into()).await,
            Some(Host::Domain(_)) => Ok(()),
            None => Err(Refused("the result URL has no host".into())),
        }
    }
}

/// The download client's resolver: the system's resolution, then every address is checked
/// against the policy; one refused address refuses the name (no falling back to a good one).
#[derive(Debug, Clone)]
pub struct CheckingResolver(pub Arc<DestinationPolicy>);

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check(&host, addr.ip()).await?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether two URLs have the same origin: scheme, host and port.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host() == b.host() && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_classed() {
        use AddressClass::*;
        for (address, class) in [
            ("8.8.8.8", Public),
            ("52.216.1.1", Public),
            ("127.0.0.2", Loopback),
            ("::1", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("fd00::1", Private),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:127.0.0.1", Loopback),
            ("255.255.255.255", Reserved),
            ("224.0.0.1", Reserved),
            ("2606:4700::1111", Public),
        ] {
            assert_eq!(AddressClass::of(ip(address)), class, "{address}");
        }
    }

    #[tokio::test]
    async fn a_public_upstream_refuses_every_private_destination() {
        let url = Url::parse("https://chat.stream-io-api.com").unwrap();
        let policy = DestinationPolicy::with_upstream_classes(url, [AddressClass::Public]);
        for address in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "fe80::1", "::", "::ffff:10.0.0.1"] {
            assert!(policy.check("h", ip(address)).await.is_err(), "{address}");
        }
        assert!(policy.check("h", ip("52.216.1.1")).await.is_ok());
    }

    #[tokio::test]
    async fn a_loopback_upstream_allows_loopback_only() {
        let policy = DestinationPolicy::new(Url::parse("http://127.0.0.1:9000").unwrap());
        assert!(policy.check("h", ip("127.0.0.2")).await.is_ok());
        assert!(policy.check("h", ip("52.216.1.1")).await.is_ok());
        for address in ["10.0.0.1", "169.254.169.254", "0.0.0.0"] {
            assert!(policy.check("h", ip(address)).await.is_err(), "{address}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(&url("https://a.com/x?s=1"), &url("https://a.com:443/y")));
        assert!(!same_origin(&url("https://a.com/x"), &url("http://a.com/x")));
        assert!(!same_origin(&url("https://a.com/x"), &url("https://b.com/x")));
        assert!(!same_origin(&url("https://a.com/x"), &url("https://a.com:8443/x")));
    }
}
