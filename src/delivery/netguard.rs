//! Where deliveries may go: https only and public addresses only, unless the config allows
//! `http://` or private networks (local development).
//!
//! Checked twice: on the URL when a webhook is saved (a clear 422), and on the *resolved*
//! addresses at send time through [`GuardedResolver`], so a DNS name that points (or later
//! re-points) at 127.0.0.1 or 10.0.0.0/8 cannot smuggle a request into the private network.
//! URLs with a literal IP never reach the resolver; [`check_url`] covers them at send time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The two switches of `[delivery]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPolicy {
    pub allow_insecure_http: bool,
    pub allow_private_networks: bool,
}

impl From<&crate::config::DeliveryConfig> for NetPolicy {
    fn from(cfg: &crate::config::DeliveryConfig) -> NetPolicy {
        NetPolicy { allow_insecure_http: cfg.allow_insecure_http, allow_private_networks: cfg.allow_private_networks }
    }
}

/// Whether `ip` is a globally routable unicast address (not loopback, private, link-local,
/// CGNAT, unspecified, multicast, documentation or benchmarking ranges).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // Only global unicast (2000::/3) is routable on the internet: everything else
            // (loopback, unique local, link- and site-local, NAT64, IPv4-translated, discard,
            // multicast, …) is refused wholesale rather than range by range.
            let excluded = match s[0] {
                // IETF protocol assignments, Teredo (embeds IPv4) and ORCHID below 2001:200::;
                // documentation 2001:db8::/32.
                0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
                // Documentation 3fff::/20 (RFC 9637).
                0x3fff => s[1] < 0x1000,
                0x2002 => true, // 6to4 (embeds IPv4)
                _ => false,
            };
            (s[0] & 0xe000) == 0x2000 && !excluded
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240) // reserved
}

/// A URL hookline will call must be written as it is read, `scheme://host…`: the URL
/// standard reads `http:///h/x`, `http:h/x` and `http:\\h\x` all as `http://h/x`, so what is
/// stored and shown would not be what is called.
pub fn check_written(raw: &str, url: &url::Url) -> Result<(), String> {
    let after = raw.get(url.scheme().len()..).and_then(|r| r.strip_prefix("://"));
    match after {
        Some(rest) if !rest.starts_with(['/', '\\']) && !raw.contains('\\') => Ok(()),
        // Not echoed: a Slack URL is a secret.
        _ => Err(format!(
            "must be written {}://host/… with two slashes and no backslash: the URL standard reads this text as \
             another one (`http:///h/x`, `http:h/x` and `http:\\\\h\\x` all as `http://h/x`)",
            url.scheme()
        )),
    }
}

/// A URL hookline will call, as configured: it parses, passes [`check_url`] and is written
/// as it is read ([`check_written`]). What receivers, writeback targets and connections are
/// checked by when saved.
pub fn check_target(raw: &str, policy: NetPolicy) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    check_url(&url, policy)?;
    check_written(raw, &url)?;
    Ok(url)
}

/// Checks scheme and (when the host is a literal IP or `localhost`) the address.
pub fn check_url(url: &url::Url, policy: NetPolicy) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_insecure_http => {}
        "http" => {
            return Err(
                "http:// URLs are refused; use https:// (or set delivery.allow_insecure_http for local development)"
                    .into(),
            )
        }
        other => return Err(format!("unsupported URL scheme {other:?}; use https://")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL (user:password@) are refused; a webhook channel or a generic connection \
             takes them as a header instead"
            .into());
    }
    // Nothing listens on port 0: every send would fail to connect.
    if url.port() == Some(0) {
        return Err("port 0 is no port to send to".into());
    }
    let private = match url.host() {
        None => return Err("the URL has no host".into()),
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    };
    if private && !policy.allow_private_networks {
        return Err("private, loopback and link-local destinations are refused (set delivery.allow_private_networks for local development)".into());
    }
    Ok(())
}

/// A DNS resolver that drops non-public addresses unless allowed, and fails with a clear
/// message when nothing is left. It plugs into both HTTP clients: the delivery client
/// (hyper-util's connector, a `tower` service of names) and reqwest (write-backs).
#[derive(Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private_networks: bool,
}

type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// Every address of a host name is one the policy refuses. A type of its own so that the
/// clients can tell it from other connection failures (the `refused` attempt result).
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to private/loopback addresses, which are refused (delivery.allow_private_networks)")]
pub struct Refused {
    pub host: String,
}

impl GuardedResolver {
    /// The addresses of `host` this policy lets a request reach (port 0: the caller sets it).
    pub async fn lookup(self, host: String) -> Result<Vec<SocketAddr>, ResolveError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        let kept: Vec<SocketAddr> =
            addrs.iter().copied().filter(|a| self.allow_private_networks || is_public(a.ip())).collect();
        if kept.is_empty() {
            if addrs.is_empty() {
                return Err(format!("{host} did not resolve to any address").into());
            }
            return Err(Box::new(Refused { host }));
        }
        Ok(kept)
    }
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ResolveError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let this = *self;
        let host = name.as_str().to_string();
        Box::pin(async move { Ok(this.lookup(host).await?.into_iter()) })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = *self;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let it: reqwest::dns::Addrs = Box::new(this.lookup(host).await?.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: NetPolicy = NetPolicy { allow_insecure_http: false, allow_private_networks: false };
    const DEV: NetPolicy = NetPolicy { allow_insecure_http: true, allow_private_networks: true };

    #[test]
    fn classifies_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:0:a00:1::1",
            "::ffff:127.0.0.1",
            "::",
            "::ffff:0:7f00:1", // IPv4-translated
            "fec0::1",         // site-local (deprecated)
            "100::1",          // discard-only
            "ff02::1",
            "2001:db8::1",
            "2001:10::1", // ORCHID
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not be public");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_url(&u("https://example.com/hook"), STRICT).is_ok());
        assert!(check_url(&u("http://example.com/hook"), STRICT).unwrap_err().contains("http://"));
        assert!(check_url(&u("https://127.0.0.1/x"), STRICT).unwrap_err().contains("private"));
        assert!(check_url(&u("https://[::1]:8443/x"), STRICT).is_err());
        assert!(check_url(&u("https://localhost/x"), STRICT).is_err());
        assert!(check_url(&u("https://169.254.169.254/latest"), STRICT).is_err());
        assert!(check_url(&u("ftp://example.com/"), STRICT).is_err());
        assert!(check_url(&u("https://user:pw@example.com/"), STRICT).is_err());
        assert!(check_url(&u("https://example.com:0/h"), STRICT).unwrap_err().contains("port 0"));
        assert!(check_url(&u("http://127.0.0.1:9/x"), DEV).is_ok());
    }

    #[tokio::test]
    async fn resolver_drops_private_addresses() {
        use reqwest::dns::Resolve;
        let strict = GuardedResolver { allow_private_networks: false };
        let err = strict.resolve("localhost".parse().unwrap()).await.err().expect("refused");
        assert!(err.to_string().contains("private"), "{err}");
        let dev = GuardedResolver { allow_private_networks: true };
        let addrs: Vec<_> = match dev.resolve("localhost".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("localhost must resolve: {e}"),
        };
        assert!(!addrs.is_empty());
    }

    /// What is stored and shown is what is called: the forms the URL standard reads as
    /// another text are refused.
    #[test]
    fn a_url_must_be_written_as_it_is_read() {
        for raw in ["https://h.example.com/x", "HTTPS://h.example.com", "http://127.0.0.1:8080/a?b=c"] {
            let u = url::Url::parse(raw).unwrap();
            assert!(check_written(raw, &u).is_ok(), "{raw}");
        }
        for raw in [
            "http:///127.0.0.1/x",
            "https:h.example.com/x",
            "https:\\\\h.example.com\\x",
            "https://h.example.com\\x",
            "https:////h.example.com",
        ] {
            let u = url::Url::parse(raw).unwrap();
            assert!(u.host_str().is_some(), "{raw}");
            let e = check_written(raw, &u).unwrap_err();
            assert!(e.contains("two slashes"), "{raw}: {e}");
        }
    }

    /// 3fff::/20 is the IPv6 documentation prefix of RFC 9637 (2024), the counterpart of
    /// 2001:db8::/32, though inside 2000::/3.
    #[test]
    fn the_new_ipv6_documentation_prefix_is_not_public() {
        for ip in ["3fff::1", "3fff:fff:ffff::1"] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not be public");
        }
    }
}
