//! Finding a peer (RFC 6120 §3.2, XEP-0368): a static address from
//! `[s2s.hosts]`, else DNS SRV `_xmpps-server._tcp` (direct TLS) then
//! `_xmpp-server._tcp` (STARTTLS), ordered by RFC 2782 priority and
//! weight, else the domain's own A/AAAA records on port 5269. Names are
//! resolved by hickory-resolver, which honours /etc/hosts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Direct TLS (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// Why nothing could be found.
#[derive(Debug)]
pub struct NotFound(pub String);

/// `host:port` (a name or an address; IPv6 in brackets).
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some((a.ip().to_string(), a.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && port != 0).then(|| (host.to_string(), port))
}

pub struct Resolver {
    dns: Option<TokioResolver>,
}

impl Resolver {
    pub fn new() -> Resolver {
        let dns = match TokioResolver::builder_tokio() {
            Ok(mut b) => {
                let o = b.options_mut();
                o.timeout = Duration::from_secs(3);
                o.attempts = 2;
                match b.build() {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "no DNS resolver: only [s2s.hosts] peers");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration: only [s2s.hosts] peers");
                None
            }
        };
        Resolver { dns }
    }

    /// The targets for `domain`, best first.
    pub async fn targets(
        &self,
        domain: &str,
        hosts: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<Target>, NotFound> {
        if let Some(a) = hosts.get(domain) {
            let Some((host, port)) = parse_host_port(a) else {
                return Err(NotFound(format!("bad [s2s.hosts] entry for {domain}")));
            };
            return Ok(vec![Target {
                host,
                port,
                direct_tls: false,
            }]);
        }
        let Some(dns) = &self.dns else {
            return Err(NotFound("no DNS resolver".into()));
        };
        let mut out = Vec::new();
        let mut refused = 0;
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            let name = format!("{service}.{domain}.");
            if let Ok(l) = dns.lookup(name.as_str(), RecordType::SRV).await {
                let srv: Vec<_> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(s) => Some((
                            s.priority,
                            s.weight,
                            s.target.to_ascii().trim_end_matches('.').to_string(),
                            s.port,
                        )),
                        _ => None,
                    })
                    .collect();
                // RFC 2782: a single "." target means "no service here".
                if srv.len() == 1 && srv[0].2.is_empty() {
                    refused += 1;
                    continue;
                }
                for (host, port) in rfc2782_order(srv) {
                    out.push(Target {
                        host,
                        port,
                        direct_tls,
                    });
                }
            }
        }
        if out.is_empty() && refused == 2 {
            // RFC 6120 §3.2.1: "." as the target: decidedly no service.
            return Err(NotFound(format!("{domain} offers no XMPP server service")));
        }
        if out.is_empty() {
            out.push(Target {
                host: domain.to_string(),
                port: 5269,
                direct_tls: false,
            });
        }
        Ok(out)
    }

    /// The addresses of a target host.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, NotFound> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let Some(dns) = &self.dns else {
            return Err(NotFound("no DNS resolver".into()));
        };
        match dns.lookup_ip(format!("{host}.").as_str()).await {
            Ok(l) => {
                let ips: Vec<IpAddr> = l.iter().collect();
                if ips.is_empty() {
                    Err(NotFound(format!("{host} has no address")))
                } else {
                    Ok(ips)
                }
            }
            Err(e) => Err(NotFound(format!("{host}: {e}"))),
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 2782: by priority (lowest first); within one priority, a weighted
/// random order (zero weights last, with a small chance).
fn rfc2782_order(mut srv: Vec<(u16, u16, String, u16)>) -> Vec<(String, u16)> {
    srv.sort_by_key(|s| s.0);
    let mut out = Vec::with_capacity(srv.len());
    let mut i = 0;
    while i < srv.len() {
        let prio = srv[i].0;
        let mut group: Vec<_> = srv[i..]
            .iter()
            .take_while(|s| s.0 == prio)
            .cloned()
            .collect();
        i += group.len();
        // Zero-weight entries first, as RFC 2782 describes the selection.
        group.sort_by_key(|s| s.1 != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|s| u32::from(s.1)).sum();
            let pick = if total == 0 {
                0
            } else {
                let r = rand::random_range(0..=total);
                let mut run = 0u32;
                group
                    .iter()
                    .position(|s| {
                        run += u32::from(s.1);
                        run >= r
                    })
                    .unwrap_or(0)
            };
            let s = group.remove(pick);
            out.push((s.2, s.3));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("10.0.0.5:5269"),
            Some(("10.0.0.5".into(), 5269))
        );
        assert_eq!(parse_host_port("[::1]:5270"), Some(("::1".into(), 5270)));
        assert_eq!(
            parse_host_port("xmpp.example:5269"),
            Some(("xmpp.example".into(), 5269))
        );
        assert_eq!(parse_host_port("xmpp.example"), None);
        assert_eq!(parse_host_port(":5269"), None);
        assert_eq!(parse_host_port("h:0"), None);
    }

    #[test]
    fn priority_then_weight() {
        let srv = vec![
            (20, 0, "c".to_string(), 1),
            (10, 0, "b".to_string(), 1),
            (10, 100, "a".to_string(), 1),
            (5, 1, "z".to_string(), 1),
        ];
        for _ in 0..50 {
            let o = rfc2782_order(srv.clone());
            assert_eq!(o[0].0, "z");
            assert_eq!(o[3].0, "c");
            let mid: Vec<_> = o[1..3].iter().map(|x| x.0.as_str()).collect();
            assert!(mid.contains(&"a") && mid.contains(&"b"));
        }
    }
}
