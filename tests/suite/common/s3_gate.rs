//! A pass-through proxy in front of the testenv MinIO whose credentials
//! "expire" after a number of bytes: from then on every connection it held
//! is cut and every new request is answered as S3 answers a request signed
//! with an expired session token (`400 ExpiredToken`). The requests before
//! reach the real server unchanged (S3 signs the Host header the client
//! sent, which the proxy passes on as it is).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct S3Gate {
    /// The endpoint to give as AWS_ENDPOINT_URL.
    pub url: String,
}

struct Shared {
    upstream: String,
    limit: u64,
    /// Expire at the first request of this method whose request line
    /// holds this text.
    marker: Option<(&'static str, &'static str)>,
    sent: AtomicU64,
    expired: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// Start a gate that lets `limit` request bytes through.
pub fn expiring_s3(limit: u64) -> S3Gate {
    start(limit, None)
}

/// Start a gate whose credentials expire at the first `method` request
/// whose request line holds `text` (say, the PUT of a backup's manifest):
/// that request and every later one is answered `ExpiredToken`.
pub fn expiring_s3_at(method: &'static str, text: &'static str) -> S3Gate {
    start(u64::MAX, Some((method, text)))
}

fn start(limit: u64, marker: Option<(&'static str, &'static str)>) -> S3Gate {
    let upstream = super::required_env("AWS_ENDPOINT_URL")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let shared = Arc::new(Shared {
        upstream,
        limit,
        marker,
        sent: AtomicU64::new(0),
        expired: AtomicBool::new(false),
        open: Mutex::new(Vec::new()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || serve(client, &shared));
        }
    });
    S3Gate {
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn serve(mut client: TcpStream, shared: &Arc<Shared>) {
    if shared.expired.load(Ordering::SeqCst) {
        refuse(client);
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(&shared.upstream) else {
        return;
    };
    if let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) {
        shared.open.lock().unwrap().extend([c, u]);
    }
    let (Ok(mut back), Ok(mut to_client)) = (upstream.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut back, &mut to_client);
    });
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A request's head starts a read: the client sends one request at
        // a time on a connection.
        let marked = shared.marker.is_some_and(|(method, text)| {
            let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
            line.starts_with(format!("{method} ").as_bytes())
                && line.windows(text.len()).any(|w| w == text.as_bytes())
        });
        if marked {
            // Not forwarded: answered as expired, and so is all that follows.
            shared.expired.store(true, Ordering::SeqCst);
            answer_expired(&mut client);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if upstream.write_all(&buf[..n]).is_err() {
            return;
        }
        let sent = shared.sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if sent >= shared.limit && !shared.expired.swap(true, Ordering::SeqCst) {
            // The token expires: every connection held is cut.
            for stream in shared.open.lock().unwrap().iter() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            return;
        }
    }
}

/// Answer a request as S3 answers one signed with an expired token.
fn refuse(mut client: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 20 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // Read the body too: answered before it is sent, the client would see
    // a reset connection rather than the answer.
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let end = text.find("\r\n\r\n").map_or(head.len(), |i| i + 4);
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(head.len() - end);
    while left > 0 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    answer_expired(&mut client);
}

/// S3's answer to a request signed with an expired session token.
fn answer_expired(client: &mut TcpStream) {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ExpiredToken</Code>\
                <Message>The provided token has expired.</Message></Error>";
    let _ = client.write_all(
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}
