//! Where mail for a domain goes: a configured smarthost, or the domain's MX hosts (RFC 5321
//! §5.1) with the A/AAAA fallback when there is no MX, and null MX (RFC 7505) as a permanent
//! failure.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::config::{DeliveryConfig, HostPort};

/// One host to try, with its addresses in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Host name (TLS server name and concurrency key).
    pub host: String,
    /// Addresses to try.
    pub addrs: Vec<SocketAddr>,
}

/// Why no destination was found. [`RouteError::is_permanent`] says whether to bounce now
/// or retry, [`RouteError::status`] the enhanced status code the DSN carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{domain} does not accept mail (null MX, RFC 7505)")]
    NullMx {
        /// The recipient domain.
        domain: String,
    },
    /// The recipient domain is an address literal that is no IP address.
    #[error("invalid address literal {literal}")]
    BadLiteral {
        /// The literal as written, brackets included.
        literal: String,
    },
    /// DNS says the domain (or the named mail host) does not exist.
    #[error("{what} {name} does not exist")]
    NoSuchName {
        /// "domain" or "host".
        what: &'static str,
        /// The name looked up.
        name: String,
    },
    /// The host exists but has no address.
    #[error("{host} has no address")]
    NoAddress {
        /// The host.
        host: String,
    },
    /// None of the domain's MX hosts resolved to an address.
    #[error("no MX host of {domain} has an address: {last}")]
    NoMxAddress {
        /// The recipient domain.
        domain: String,
        /// Why the last MX host failed.
        last: Box<RouteError>,
    },
    /// The lookup itself failed (timeout, SERVFAIL, unreachable resolver).
    #[error("{lookup} lookup for {name} failed: {reason}")]
    Lookup {
        /// "MX" or "address".
        lookup: &'static str,
        /// The name looked up.
        name: String,
        /// The resolver's explanation.
        reason: String,
    },
}

impl RouteError {
    /// Whether the mail must bounce now; otherwise the failure is DNS trouble worth a retry.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RouteError::NullMx { .. }
                | RouteError::BadLiteral { .. }
                | RouteError::NoSuchName { .. }
        )
    }

    /// The enhanced status code (RFC 3463) for the recipients' delivery status.
    pub fn status(&self) -> &'static str {
        match self {
            RouteError::NullMx { .. } => "5.1.10",
            RouteError::BadLiteral { .. } | RouteError::NoSuchName { .. } => "5.1.2",
            RouteError::NoAddress { .. }
            | RouteError::NoMxAddress { .. }
            | RouteError::Lookup { .. } => "4.4.3",
        }
    }
}

/// Resolves destinations for recipient domains.
pub struct Router {
    resolver: TokioResolver,
    relay: Option<(String, u16)>,
    mx_port: u16,
}

impl Router {
    /// A router for the delivery configuration.
    pub fn new(config: &DeliveryConfig) -> anyhow::Result<Self> {
        let resolver = if config.dns_servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read the system DNS configuration: {e}; set delivery.dns_servers"
                    )
                })?
                .build()
        } else {
            let servers = config
                .dns_servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut options = ResolverOpts::default();
            options.attempts = 2;
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(options)
            .build()
        }
        .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?;
        let relay = config
            .relay_host
            .clone()
            .map(|HostPort { host, port }| (host, port));
        Ok(Self {
            resolver,
            relay,
            mx_port: config.port,
        })
    }

    /// Whether mail goes to a smarthost.
    pub fn relay(&self) -> Option<&(String, u16)> {
        self.relay.as_ref()
    }

    /// The hosts to try for `domain`, best first.
    pub async fn route(&self, domain: &str) -> Result<Vec<Destination>, RouteError> {
        if let Some((host, port)) = &self.relay {
            let addrs = self.addresses(host, *port).await?;
            return Ok(vec![Destination {
                host: host.clone(),
                addrs,
            }]);
        }
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr = literal.trim_start_matches("IPv6:").parse().map_err(|_| {
                RouteError::BadLiteral {
                    literal: domain.to_string(),
                }
            })?;
            return Ok(vec![Destination {
                host: literal.to_string(),
                addrs: vec![SocketAddr::new(ip, self.mx_port)],
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mxs: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if mxs.iter().any(|(_, host)| host == "." || host.is_empty()) {
                    return Err(RouteError::NullMx {
                        domain: domain.to_string(),
                    });
                }
                if mxs.is_empty() {
                    return self.implicit_mx(domain, &fqdn).await;
                }
                mxs.sort_by_key(|(pref, _)| *pref);
                let mut out = Vec::new();
                let mut last_error = None;
                for (_, host) in mxs {
                    match self.addresses(&host, self.mx_port).await {
                        Ok(addrs) => out.push(Destination {
                            host: host.trim_end_matches('.').to_string(),
                            addrs,
                        }),
                        Err(e) => last_error = Some(e),
                    }
                }
                if out.is_empty()
                    && let Some(last) = last_error
                {
                    return Err(RouteError::NoMxAddress {
                        domain: domain.to_string(),
                        last: Box::new(last),
                    });
                }
                Ok(out)
            }
            Err(e) if e.is_nx_domain() => Err(RouteError::NoSuchName {
                what: "domain",
                name: domain.to_string(),
            }),
            Err(e) if e.is_no_records_found() => self.implicit_mx(domain, &fqdn).await,
            Err(e) => Err(RouteError::Lookup {
                lookup: "MX",
                name: domain.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// No MX: the domain itself is the mail host (RFC 5321 §5.1).
    async fn implicit_mx(&self, domain: &str, fqdn: &str) -> Result<Vec<Destination>, RouteError> {
        let addrs = self.addresses(fqdn, self.mx_port).await?;
        Ok(vec![Destination {
            host: domain.to_string(),
            addrs,
        }])
    }

    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        match self.resolver.lookup_ip(name.as_str()).await {
            Ok(ips) => {
                let addrs: Vec<SocketAddr> =
                    ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if addrs.is_empty() {
                    Err(RouteError::NoAddress {
                        host: host.to_string(),
                    })
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_nx_domain() => Err(RouteError::NoSuchName {
                what: "host",
                name: host.to_string(),
            }),
            Err(e) => Err(RouteError::Lookup {
                lookup: "address",
                name: host.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}
