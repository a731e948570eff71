//! A reverse proxy with HTTP basic authentication in front of the testenv
//! OpenSearch. testenv runs OpenSearch without its security plugin, so the
//! cluster takes any password; through the gate, a request with the wrong
//! credentials gets `401 Unauthorized` (with `WWW-Authenticate`, as a secured
//! cluster or an nginx with `auth_basic` answers), one with [`USER`] and
//! [`PASSWORD`] reaches the real cluster.
//!
//! The credentials are checked on a connection's first request; the rest of
//! the connection is passed through byte for byte (a client sends the same
//! credentials with every request of a connection).
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;

use base64::Engine;

pub const USER: &str = "itb-gate";
pub const PASSWORD: &str = "gate-Password-7";

/// The gate's URL (started on first use, for the rest of the test binary).
pub fn opensearch_behind_basic_auth() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let upstream = super::required_env("OPENSEARCH_URL");
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        assert!(
            !upstream.contains('/') && !upstream.contains('@'),
            "the gate forwards to a plain http://host:port, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                std::thread::spawn(move || serve(client, &upstream));
            }
        });
        format!("http://127.0.0.1:{port}")
    })
    .clone()
}

fn serve(mut client: TcpStream, upstream: &str) {
    // The request head, up to its empty line (and whatever followed it).
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 1 << 20 {
            return;
        }
    }
    let expected = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let admitted = String::from_utf8_lossy(&head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("authorization")
                && value.trim().eq_ignore_ascii_case(&expected)
        })
    });
    if !admitted {
        let body = br#"{"error":"Unauthorized","status":401}"#;
        let _ = client.write_all(
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"OpenSearch Security\"\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let _ = client.write_all(body);
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    if server.write_all(&head).is_err() {
        return;
    }
    let (mut client_in, mut server_out) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
}
