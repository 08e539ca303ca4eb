//! A hostile parent for tests: an HTTP server in front of the real parent that lies as told (other OHTTP
//! keys, an old attestation document), forwards everything else, and counts the encapsulated requests
//! that reach it: the recording that shows whether any request body left a client.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use veil_protocol::ohttp;

use crate::http_raw_typed;

/// What a hostile parent in front of the real one does.
#[derive(Clone)]
pub enum Lie {
    /// Nothing: forwards everything (and counts).
    Nothing,
    /// Serves this key list instead of the enclave's.
    Keys(Vec<u8>),
    /// Answers every attestation request with this document (fetched earlier, for another nonce).
    Document(Vec<u8>),
    /// Answers every encapsulated request with 422 ("did not decapsulate"), forwarding none.
    Undecapsulable,
    /// Answers the first this many POSTs (sealed or encapsulated inference) with 503 and `Retry-After: 0`,
    /// as a parent whose enclave is restarting does, forwarding none of them; forwards the rest.
    Unavailable(usize),
}

/// What reached the hostile parent: encapsulated requests (whether forwarded or not) and attestation
/// requests.
#[derive(Debug, Default)]
pub struct Seen {
    pub posts: AtomicUsize,
    pub attestations: AtomicUsize,
    /// POSTs answered 503 by [`Lie::Unavailable`].
    pub refused: AtomicUsize,
    /// The body of every POST, in arrival order.
    pub post_bodies: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Seen {
    pub fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }

    pub fn attestations(&self) -> usize {
        self.attestations.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn post_bodies(&self) -> Vec<Vec<u8>> {
        self.post_bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A parent in front of the real one (`upstream`) that lies as told, forwards everything else, and counts
/// what reaches it.
pub fn hostile_parent(upstream: String, lie: Lie) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let counter = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (upstream, lie, seen) = (upstream.clone(), lie.clone(), Arc::clone(&counter));
            std::thread::spawn(move || {
                let Some((method, path, content_type, body)) = read_request(&mut conn) else { return };
                if method == "POST" && path == ohttp::GATEWAY_PATH {
                    seen.posts.fetch_add(1, Ordering::SeqCst);
                }
                if path.starts_with("/v1/attestation") {
                    seen.attestations.fetch_add(1, Ordering::SeqCst);
                }
                let mut refuse = false;
                if method == "POST" {
                    seen.post_bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(body.clone());
                    if let Lie::Unavailable(first) = &lie {
                        refuse = seen
                            .refused
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < *first).then_some(n + 1))
                            .is_ok();
                    }
                }
                let (status, ctype, answer) = match (&lie, method.as_str(), path.as_str()) {
                    _ if refuse => (503, "application/json", br#"{"error":"the enclave is restarting"}"#.to_vec()),
                    (Lie::Keys(k), "GET", ohttp::GATEWAY_PATH) => (200, ohttp::KEYS_MEDIA_TYPE, k.clone()),
                    (Lie::Document(d), "GET", p) if p.starts_with("/v1/attestation") => {
                        (200, "application/cbor", d.clone())
                    }
                    (Lie::Undecapsulable, "POST", ohttp::GATEWAY_PATH) => {
                        (422, "application/json", br#"{"error":"OHTTP: unknown key id"}"#.to_vec())
                    }
                    _ => {
                        let (s, b) = http_raw_typed(&upstream, &method, &path, content_type.as_deref(), &body).unwrap();
                        (s, "application/octet-stream", b)
                    }
                };
                let retry_after = if refuse { "Retry-After: 0\r\n" } else { "" };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{retry_after}Connection: close\r\n\r\n",
                    answer.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&answer);
            });
        }
    });
    (url, seen)
}

/// One HTTP/1.1 request: method, path, content type, body.
pub fn read_request(conn: &mut TcpStream) -> Option<(String, String, Option<String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let mut len = 0usize;
    let mut content_type = None;
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if lower.starts_with("content-type:") {
            content_type = Some(l["content-type:".len()..].trim().to_owned());
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some((method, path, content_type, body))
}
