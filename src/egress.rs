//! Outbound calls made on a tenant's behalf, and the operator's policy over them.
//!
//! Every call the server makes for a tenant (an API tool, a webhook, a source fetch, a model
//! endpoint, a simulation's notification) goes through one [`Egress`] client:
//!
//! - **Where.** Loopback, private, link-local, unique-local, CGNAT, multicast, broadcast,
//!   reserved and unspecified addresses are refused, in every spelling (`127.1`, `2130706433`,
//!   `0x7f000001`, `[::ffff:127.0.0.1]`, NAT64 and 6to4 forms of them) unless the operator's
//!   allow-list opens them. A literal address is checked before connecting; a name is
//!   resolved by the client's own resolver, which hands the connector only the addresses the
//!   policy admits, so the address connected to is the address checked (no rebinding window).
//!   Proxies from the environment are not used: they would connect somewhere unchecked.
//! - **Redirects** are followed here, not by reqwest, so that each hop is checked again and
//!   loses its credentials (`Authorization`, `Cookie` and the caller's secret headers) once it
//!   leaves the origin it started at.
//! - **Time and size.** A call takes at most [`Policy::max_time`], redirects included, whatever
//!   the tenant configured; [`read_capped`] stops reading an answer at a size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::header::{self, HeaderName};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;

/// The operator's policy over outbound calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The longest any one outbound call may take, redirects, connecting and reading included.
    pub max_time: Duration,
    /// What is reachable although the rules refuse it (a self-hosted model, the tests'
    /// loopback servers).
    pub allow: Vec<Allowed>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_time: Duration::from_secs(30),
            allow: Vec::new(),
        }
    }
}

/// One entry of the operator's allow-list: a network or a host name, on any port or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Net(IpNet, Option<u16>),
    Host(String, Option<u16>),
}

impl std::str::FromStr for Allowed {
    type Err = String;

    /// `10.0.0.0/8`, `127.0.0.1`, `::1`, `[::1]:8080`, `127.0.0.1:9000`, `models.internal`,
    /// `models.internal:8443`.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self::Net(net, None));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip), None));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Net(IpNet::from(addr.ip()), Some(addr.port())));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("`{text}`: the port is not a number"))?;
                (host, Some(port))
            }
            None => (text, None),
        };
        if let Ok(net) = host.parse::<IpNet>() {
            return Ok(Self::Net(net, port));
        }
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(format!(
                "`{text}` is not a network, an address or a host name (with an optional port)"
            ));
        }
        Ok(Self::Host(host.to_ascii_lowercase(), port))
    }
}

impl Policy {
    /// A policy with `max_time` that opens loopback (what tests and a single-machine install
    /// of a model server need).
    pub fn with_loopback(max_time: Duration) -> Self {
        Self {
            max_time,
            allow: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .map(|net| Allowed::Net(net, None))
                .collect(),
        }
    }

    /// How long a call that asks for `wanted` may take.
    pub fn time_for(&self, wanted: Duration) -> Duration {
        wanted.min(self.max_time)
    }

    /// Whether the allow-list opens the host name `host` on `port` (any port when `None`).
    fn allows_host(&self, host: &str, port: Option<u16>) -> bool {
        self.allow.iter().any(|a| match a {
            Allowed::Host(h, p) => h.eq_ignore_ascii_case(host) && port_matches(*p, port),
            Allowed::Net(..) => false,
        })
    }

    /// Why connecting to `ip` on `port` is refused, or `None` when it is not.
    fn refusal(&self, ip: IpAddr, port: Option<u16>) -> Option<&'static str> {
        let reason = forbidden(ip)?;
        let opened = self.allow.iter().any(|a| match a {
            Allowed::Net(net, p) => net.contains(&ip) && port_matches(*p, port),
            Allowed::Host(..) => false,
        });
        (!opened).then_some(reason)
    }

    /// Checks a URL before anything is resolved: its scheme, and its host when that is an
    /// address. A name is checked when it resolves ([`Egress`]). The message names what is
    /// wrong and never the URL's credentials.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "only http and https URLs are allowed, not {}",
                url.scheme()
            ));
        }
        let port = url.port_or_known_default();
        match url.host() {
            None => Err("the URL has no host".into()),
            Some(url::Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4), port),
            Some(url::Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6), port),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.');
                if self.allows_host(name, port) {
                    return Ok(());
                }
                if name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost") {
                    return Err(format!(
                        "{name} is a loopback name, refused by the egress policy"
                    ));
                }
                Ok(())
            }
        }
    }

    fn check_ip(&self, ip: IpAddr, port: Option<u16>) -> Result<(), String> {
        match self.refusal(ip, port) {
            Some(reason) => Err(format!("{ip} is {reason}, refused by the egress policy")),
            None => Ok(()),
        }
    }
}

fn port_matches(rule: Option<u16>, port: Option<u16>) -> bool {
    rule.is_none() || rule == port
}

/// What kind of address `ip` is when the policy refuses it by default.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    let reason = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address (cloud metadata lives here)"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (CGNAT) address"
    } else if ip.is_multicast() || ip.is_broadcast() {
        "a multicast or broadcast address"
    } else if a == 0 || a >= 240 {
        "an unspecified or reserved address"
    } else if (a == 198 && (b == 18 || b == 19)) || (a == 192 && b == 0 && ip.octets()[2] == 0) {
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Forms that carry an IPv4 address: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d),
    // NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:abcd:efgh::).
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(v4(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return forbidden_v4(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return forbidden_v4(v4(s[1], s[2]));
    }
    let reason = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "the unspecified address"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "a unique-local address"
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        "a link-local address"
    } else if s[0] & 0xff00 == 0xff00 {
        "a multicast address"
    } else {
        return None;
    };
    Some(reason)
}

/// Why an outbound call did not get an answer; the message never holds a header or secret.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{0}")]
    Refused(String),
    #[error("the call took longer than {0:?}")]
    TimedOut(Duration),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request is not valid: {0}")]
    Invalid(String),
    #[error("the connection failed: {0}")]
    Connect(String),
    #[error("{0}")]
    Failed(String),
}

impl EgressError {
    fn of(e: reqwest::Error, limit: Duration) -> Self {
        if e.is_timeout() {
            return Self::TimedOut(limit);
        }
        // A refusal by the resolver arrives wrapped in reqwest's and hyper's errors.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(Refusal(reason)) = s.downcast_ref::<Refusal>() {
                return Self::Refused(reason.clone());
            }
            source = s.source();
        }
        if e.is_connect() {
            return Self::Connect(e.without_url().to_string());
        }
        Self::Failed(e.without_url().to_string())
    }
}

/// A resolver's refusal, found again in the error chain by [`EgressError::of`].
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// Resolves names and keeps the addresses the policy admits.
struct Resolver(Arc<Policy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // A host the operator named is open whatever it resolves to; its port was checked
            // with the URL.
            let named = policy
                .allow
                .iter()
                .any(|a| matches!(a, Allowed::Host(h, _) if *h == host));
            let mut refused = None;
            let admitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.refusal(addr.ip(), None) {
                    Some(reason) if !named => {
                        refused = Some(format!(
                            "{host} resolves to {}, {reason}, refused by the egress policy",
                            addr.ip()
                        ));
                        false
                    }
                    _ => true,
                })
                .collect();
            match (admitted.is_empty(), refused) {
                (true, Some(reason)) => Err(Box::new(Refusal(reason)) as _),
                (true, None) => Err(Box::new(Refusal(format!("{host} does not resolve"))) as _),
                (false, _) => Ok(Box::new(admitted.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The one client for calls on a tenant's behalf (see the module docs).
#[derive(Debug, Clone)]
pub struct Egress {
    policy: Arc<Policy>,
    client: reqwest::Client,
}

impl Egress {
    pub fn new(policy: Policy) -> Self {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(policy.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(policy.max_time)
            .user_agent(concat!("agentplane/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self { policy, client }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A request to build with the usual builder, then to [`Egress::send`].
    pub fn request(&self, method: reqwest::Method, url: url::Url) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends `request`, following redirects (each checked; `secret` headers, and
    /// `Authorization` and `Cookie`, dropped once a hop leaves the first origin), within
    /// `wanted` capped by the policy.
    pub async fn send(
        &self, request: reqwest::RequestBuilder, wanted: Duration, secret: &[HeaderName],
    ) -> Result<reqwest::Response, EgressError> {
        self.hops(request, wanted, secret, MAX_REDIRECTS).await
    }

    /// Sends `request` without following a redirect (a webhook's receiver answers itself).
    pub async fn send_once(
        &self, request: reqwest::RequestBuilder, wanted: Duration,
    ) -> Result<reqwest::Response, EgressError> {
        self.hops(request, wanted, &[], 0).await
    }

    async fn hops(
        &self, request: reqwest::RequestBuilder, wanted: Duration, secret: &[HeaderName],
        redirects: usize,
    ) -> Result<reqwest::Response, EgressError> {
        let limit = self.policy.time_for(wanted);
        let deadline = Instant::now() + limit;
        let mut request = request
            .build()
            .map_err(|e| EgressError::Invalid(e.without_url().to_string()))?;
        let origin = request.url().origin();
        for _ in 0..=redirects {
            self.policy
                .check_url(request.url())
                .map_err(EgressError::Refused)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EgressError::TimedOut(limit));
            }
            *request.timeout_mut() = Some(left);
            let next = request.try_clone();
            let answer = self
                .client
                .execute(request)
                .await
                .map_err(|e| EgressError::of(e, limit))?;
            let Some(location) = redirect_target(&answer).filter(|_| redirects > 0) else {
                return Ok(answer);
            };
            let Some(mut next) = next else {
                // A streamed body cannot be sent again: the redirect is the answer.
                return Ok(answer);
            };
            let status = answer.status();
            *next.url_mut() = location;
            if status == reqwest::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && next.method() == reqwest::Method::POST)
            {
                *next.method_mut() = reqwest::Method::GET;
                *next.body_mut() = None;
                next.headers_mut().remove(header::CONTENT_TYPE);
                next.headers_mut().remove(header::CONTENT_LENGTH);
            }
            if next.url().origin() != origin {
                let headers = next.headers_mut();
                for name in [
                    header::AUTHORIZATION,
                    header::COOKIE,
                    header::PROXY_AUTHORIZATION,
                ]
                .iter()
                .chain(secret)
                {
                    headers.remove(name);
                }
            }
            request = next;
        }
        Err(EgressError::TooManyRedirects)
    }
}

/// Where a redirect answer points, resolved against the URL it answered.
fn redirect_target(answer: &reqwest::Response) -> Option<url::Url> {
    if !answer.status().is_redirection() || answer.status() == reqwest::StatusCode::NOT_MODIFIED {
        return None;
    }
    let location = answer.headers().get(header::LOCATION)?.to_str().ok()?;
    answer.url().join(location).ok()
}

/// Reads `answer`'s body up to `max` bytes: `Err(TooLarge)` past it, unless `truncate`, which
/// keeps the first `max` bytes.
pub async fn read_capped(
    mut answer: reqwest::Response, max: usize, truncate: bool,
) -> Result<Vec<u8>, EgressError> {
    let mut body = Vec::new();
    while let Some(piece) = answer.chunk().await.map_err(|e| {
        EgressError::Failed(format!("reading the answer failed: {}", e.without_url()))
    })? {
        if body.len() + piece.len() > max {
            if truncate {
                body.extend_from_slice(&piece[..max - body.len()]);
                return Ok(body);
            }
            return Err(EgressError::TooLarge(max));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        Policy::default()
            .check_url(&url::Url::parse(url).expect("a URL"))
            .is_err()
    }

    #[test]
    fn the_operator_cap_wins_over_a_longer_wish() {
        let policy = Policy {
            max_time: Duration::from_secs(2),
            ..Policy::default()
        };
        assert_eq!(
            policy.time_for(Duration::from_secs(30)),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.time_for(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn every_spelling_of_loopback_is_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://a.localhost/",
            "http://0.0.0.0/",
            "http://[::]/",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
    }

    #[test]
    fn internal_networks_are_refused_and_public_ones_are_not() {
        for url in [
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "ftp://example.com/",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
        for url in [
            "https://api.example.com/weather",
            "http://93.184.216.34/",
            "http://[2606:2800:220:1:248:1893:25c7:1946]/",
        ] {
            assert!(!refused(url), "{url} should pass");
        }
    }

    #[test]
    fn the_allow_list_opens_networks_hosts_and_ports() {
        let policy = Policy {
            allow: [
                "10.0.0.0/8",
                "127.0.0.1:9000",
                "models.internal",
                "[::1]:8080",
            ]
            .iter()
            .map(|a| a.parse().expect("an entry"))
            .collect(),
            ..Policy::default()
        };
        let ok = |u: &str| {
            policy
                .check_url(&url::Url::parse(u).expect("a URL"))
                .is_ok()
        };
        assert!(ok("http://10.9.9.9/"));
        assert!(ok("http://127.0.0.1:9000/"));
        assert!(!ok("http://127.0.0.1:9001/"));
        assert!(ok("http://[::1]:8080/"));
        assert!(!ok("http://[::1]:8081/"));
        assert!(ok("http://MODELS.internal/"));
        assert!(!ok("http://192.168.0.1/"));
        assert!("not a host!".parse::<Allowed>().is_err());
        assert!("host:port".parse::<Allowed>().is_err());
    }

    /// A loopback server answering every request with `answer`, sending each request's
    /// head to the returned channel.
    async fn server(answer: String) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = vec![0u8; 8192];
                let n = socket.read(&mut head).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&head[..n]).to_lowercase());
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    fn redirect_to(location: &str) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

    fn get(egress: &Egress, url: String) -> reqwest::RequestBuilder {
        egress
            .request(reqwest::Method::GET, url::Url::parse(&url).expect("a URL"))
            .header("x-api-key", "sealed-secret")
            .header("authorization", "Bearer token")
            .header("x-plain", "kept")
    }

    #[tokio::test]
    async fn a_redirect_to_another_origin_loses_credentials_and_secret_headers() {
        let (target, mut seen) = server(OK.into()).await;
        let (start, mut first) = server(redirect_to(&format!("http://{target}/next"))).await;
        let egress = Egress::new(Policy::with_loopback(Duration::from_secs(5)));
        let secret = [HeaderName::from_static("x-api-key")];
        let answer = egress
            .send(
                get(&egress, format!("http://{start}/")),
                Duration::from_secs(5),
                &secret,
            )
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 200);
        let first = first.recv().await.expect("the first hop");
        assert!(first.contains("x-api-key: sealed-secret") && first.contains("authorization"));
        let second = seen.recv().await.expect("the second hop");
        assert!(second.starts_with("get /next"), "{second}");
        assert!(second.contains("x-plain: kept"), "{second}");
        assert!(
            !second.contains("sealed-secret") && !second.contains("authorization"),
            "{second}"
        );
    }

    #[tokio::test]
    async fn nothing_connects_where_the_policy_refuses() {
        let (target, mut seen) = server(OK.into()).await;
        // Sends a GET to `url` through `policy`, which must refuse it.
        async fn refused(policy: Policy, url: String) {
            let egress = Egress::new(policy);
            let answer = egress
                .send(get(&egress, url), Duration::from_secs(5), &[])
                .await;
            assert!(matches!(answer, Err(EgressError::Refused(_))), "{answer:?}");
        }
        refused(Policy::default(), format!("http://{target}/")).await;
        // A redirect from an open address to a refused one stops at the hop.
        let (start, _) = server(redirect_to(&format!("http://{target}/"))).await;
        let only_start = Policy {
            allow: vec![
                format!("127.0.0.1:{}", start.port())
                    .parse()
                    .expect("entry"),
            ],
            ..Policy::default()
        };
        refused(only_start, format!("http://{start}/")).await;
        assert!(
            seen.try_recv().is_err(),
            "the refused server got a connection"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_by_the_resolver() {
        use reqwest::dns::Resolve;
        let resolver = Resolver(Arc::new(Policy::default()));
        let name: reqwest::dns::Name = "localhost".parse().expect("a name");
        let refused = resolver.resolve(name).await;
        let Err(e) = refused else {
            panic!("localhost resolved to an admitted address")
        };
        assert!(
            e.to_string().contains("refused by the egress policy"),
            "{e}"
        );
        let open = Resolver(Arc::new(Policy::with_loopback(Duration::from_secs(1))));
        let name: reqwest::dns::Name = "localhost".parse().expect("a name");
        assert!(open.resolve(name).await.is_ok());
    }

    #[tokio::test]
    async fn answers_are_read_up_to_a_size() {
        let (addr, _) = server(OK.into()).await;
        let egress = Egress::new(Policy::with_loopback(Duration::from_secs(5)));
        let send = || {
            egress.send(
                get(&egress, format!("http://{addr}/")),
                Duration::from_secs(5),
                &[],
            )
        };
        let answer = send().await.expect("an answer");
        assert!(matches!(
            read_capped(answer, 3, false).await,
            Err(EgressError::TooLarge(3))
        ));
        let answer = send().await.expect("an answer");
        assert_eq!(read_capped(answer, 3, true).await.expect("read"), b"hel");
    }
}
