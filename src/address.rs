//! Server addresses as settings give them (`host:port`, URLs with or
//! without credentials, PostgreSQL socket directories): their host and
//! port, whether two name the same server, whether one is on this machine.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long resolving a server's host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Host and port of a server address (`host:port`, a URL with or without
/// credentials, a PostgreSQL socket directory), for comparing and showing.
pub fn host_port(address: &str) -> (String, u16) {
    let (scheme, rest) = address.split_once("://").unwrap_or(("", address));
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        "bolt" | "bolt+s" | "bolt+ssc" | "neo4j" | "neo4j+s" | "neo4j+ssc" => 7687,
        _ => 5432,
    };
    if rest.starts_with('/') {
        // A PostgreSQL socket directory, `DIR:PORT`.
        return match rest.rsplit_once(':') {
            Some((dir, port)) => (dir.to_string(), port.parse().unwrap_or(default_port)),
            None => (rest.to_string(), default_port),
        };
    }
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, port)) => (host, port.strip_prefix(':')),
            None => (v6, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = port.and_then(|p| p.parse().ok()).unwrap_or(default_port);
    (host.to_ascii_lowercase(), port)
}

pub fn shown_address(address: &str) -> String {
    let (host, port) = host_port(address);
    format!("{host}:{port}")
}

/// Whether two addresses reach the same server.
pub async fn same_server(a: &str, b: &str) -> bool {
    let (host_a, port_a) = host_port(a);
    let (host_b, port_b) = host_port(b);
    if port_a != port_b {
        return false;
    }
    if host_a == host_b {
        return true;
    }
    let (ips_a, ips_b) = (
        resolve(&host_a, port_a).await,
        resolve(&host_b, port_b).await,
    );
    ips_a.intersection(&ips_b).next().is_some()
        || (ips_a.iter().any(is_this_machine) && ips_b.iter().any(is_this_machine))
}

/// The addresses a host name resolves to (none when it does not resolve in time).
pub async fn resolve(host: &str, port: u16) -> BTreeSet<IpAddr> {
    if host.starts_with('/') {
        return BTreeSet::new();
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(found)) => found.map(|a: SocketAddr| a.ip()).collect(),
        _ => BTreeSet::new(),
    }
}

/// A loopback address or one of this machine's own (it can be bound to).
pub fn is_this_machine(ip: &IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((*ip, 0)).is_ok()
}

/// Whether the server at `address` runs on this machine (a socket
/// directory, a loopback address, or one of this machine's own).
pub async fn on_this_machine(address: &str) -> bool {
    let (host, port) = host_port(address);
    host.starts_with('/') || resolve(&host, port).await.iter().any(is_this_machine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_as_host_and_port() {
        assert_eq!(host_port("localhost:5432"), ("localhost".into(), 5432));
        assert_eq!(
            host_port("http://elastic:secret@Search.example:9201/"),
            ("search.example".into(), 9201)
        );
        assert_eq!(
            host_port("https://search.example"),
            ("search.example".into(), 443)
        );
        assert_eq!(host_port("bolt://[::1]:7688"), ("::1".into(), 7688));
        assert_eq!(host_port("neo4j://graph"), ("graph".into(), 7687));
        assert_eq!(
            host_port("/var/run/postgresql:5433"),
            ("/var/run/postgresql".into(), 5433)
        );
        assert_eq!(
            shown_address("http://u:p@h:1/"),
            "h:1",
            "no credentials shown"
        );
    }

    #[tokio::test]
    async fn the_same_server_is_recognised_under_other_names() {
        assert!(same_server("localhost:5432", "127.0.0.1:5432").await);
        assert!(same_server("http://localhost:9200", "http://127.0.0.1:9200/").await);
        assert!(same_server("bolt://LOCALHOST:7687", "bolt://localhost").await);
        assert!(!same_server("localhost:5432", "localhost:15432").await);
        assert!(!same_server("http://localhost:9200", "http://localhost:19200").await);
    }

    #[tokio::test]
    async fn local_servers_are_told_from_remote_ones() {
        assert!(on_this_machine("localhost:5432").await);
        assert!(on_this_machine("http://127.0.0.1:9200").await);
        assert!(on_this_machine("/var/run/postgresql:5432").await);
        assert!(
            !on_this_machine("http://192.0.2.10:9200").await,
            "TEST-NET-1 is nobody's"
        );
    }
}
