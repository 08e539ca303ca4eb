//! The enclave's listener against hostile bytes: raw frames over a real socket, no parent in between.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use veil_protocol::message::{self, EnclaveRequest, EnclaveResponse, ErrorKind};
use veil_tests::{Stack, StackOptions, Transport, compare_outputs, references};

fn connect(stack: &Stack) -> UnixStream {
    let path = stack.enclave_addr.trim_start_matches("unix://");
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn send(s: &mut UnixStream, id: u64, req: &EnclaveRequest, attachment: &[u8]) {
    let payload = message::encode(id, req, attachment).unwrap();
    s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&payload).unwrap();
}

/// One answer: its id, body and attachment.
struct Answer {
    id: u64,
    body: EnclaveResponse,
    attachment: Vec<u8>,
}

/// Reads one answer, or None when the enclave closed the connection.
fn recv(s: &mut UnixStream) -> Option<Answer> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut payload).ok()?;
    let m = message::decode::<EnclaveResponse>(&payload).unwrap();
    Some(Answer { id: m.id, body: m.body, attachment: payload[m.attachment].to_vec() })
}

fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the enclave to close the connection, got {other:?}"),
    }
}

fn assert_still_serving(stack: &Stack) {
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let mut s = connect(stack);
    let (body, tag) = stack.seal("breast_cancer", &serde_json::to_vec(&case["request"]).unwrap()).unwrap();
    send(&mut s, 1, &EnclaveRequest::Infer { model: "breast_cancer".into() }, &body);
    let answer = recv(&mut s).unwrap();
    match answer.body {
        EnclaveResponse::Infer => {
            let (_, opened) = stack.open(&tag, &answer.attachment).unwrap();
            compare_outputs(&serde_json::from_slice(&opened).unwrap(), case).unwrap();
        }
        other => panic!("{other:?}"),
    }
}

fn stack() -> Stack {
    Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap()
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let stack = stack();
    let mut bystander = connect(&stack);
    let mut s = connect(&stack);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let reply = recv(&mut s).expect("an error answer before closing");
    match reply.body {
        EnclaveResponse::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Protocol);
            assert!(e.message.contains("exceeds the maximum"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s);
    // A connection opened before the attack still works, and so do new ones.
    send(&mut bystander, 5, &EnclaveRequest::Status, b"");
    assert!(matches!(recv(&mut bystander).unwrap().body, EnclaveResponse::Status { ready: true, .. }));
    assert_still_serving(&stack);
}

#[test]
fn truncated_frame_closes_the_connection() {
    let stack = stack();
    let mut s = connect(&stack);
    s.write_all(&[0, 0, 1, 0, 1, 2, 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    match recv(&mut s).map(|m| m.body) {
        Some(EnclaveResponse::Error(e)) => assert!(e.message.contains("truncated"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert_still_serving(&stack);
    assert!(stack.enclave_log().contains("bad frame"));
}

#[test]
fn garbage_and_wrong_versions_are_refused() {
    let stack = stack();
    // Well-framed garbage.
    let mut s = connect(&stack);
    s.write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0x00, 0x13, 0x37]).unwrap();
    match recv(&mut s).map(|m| m.body) {
        Some(EnclaveResponse::Error(e)) => assert!(e.message.contains("malformed message"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s);
    // A future protocol version is named, with the request id answered.
    let mut s = connect(&stack);
    let mut payload = message::encode(77, &EnclaveRequest::Status, b"").unwrap();
    payload[..2].copy_from_slice(&9u16.to_be_bytes());
    s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&payload).unwrap();
    let reply = recv(&mut s).unwrap();
    assert_eq!(reply.id, 77);
    match reply.body {
        EnclaveResponse::Error(e) => assert!(e.message.contains("unsupported protocol version 9"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert_still_serving(&stack);
}

#[test]
fn many_requests_in_flight_on_one_connection() {
    let stack = stack();
    let refs = references("breast_cancer").unwrap();
    let cases = refs["cases"].as_array().unwrap();
    let mut s = connect(&stack);
    let n = 64u64;
    let mut tags = std::collections::HashMap::new();
    for id in 0..n {
        let case = &cases[(id as usize) % cases.len()];
        let (body, tag) = stack.seal("breast_cancer", &serde_json::to_vec(&case["request"]).unwrap()).unwrap();
        tags.insert(1000 + id, tag);
        send(&mut s, 1000 + id, &EnclaveRequest::Infer { model: "breast_cancer".into() }, &body);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let m = recv(&mut s).unwrap();
        let case = &cases[((m.id - 1000) as usize) % cases.len()];
        match m.body {
            EnclaveResponse::Infer => {
                let (_, opened) = stack.open(&tags[&m.id], &m.attachment).unwrap();
                compare_outputs(&serde_json::from_slice(&opened).unwrap(), case).unwrap()
            }
            other => panic!("{other:?}"),
        }
        assert!(seen.insert(m.id), "answered twice: {}", m.id);
    }
    assert_eq!(seen.len() as u64, n);
}

/// Finding 4: frames are charged against the enclave's budget of request bytes in flight before they are
/// buffered; one that does not fit is read and dropped, and answered `unavailable` with a Retry-After,
/// while the connection keeps serving.
#[test]
fn finding_4_frames_over_the_byte_budget_are_refused_without_being_buffered() {
    let mut opts = StackOptions::new(Transport::Unix, &["breast_cancer"]);
    opts.enclave_config = "[limits]\nmax_frame_bytes = 1048576\nmax_request_bytes_in_flight = 1048576\n".into();
    let stack = Stack::start(opts).unwrap();
    // Connection A announces 900 KiB and sends ten bytes: its charge is held while it dawdles.
    let mut a = connect(&stack);
    a.write_all(&(900u32 * 1024).to_be_bytes()).unwrap();
    a.write_all(&[0; 10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Connection B sends a whole 900 KiB request: no room left, so it is refused by id, unread.
    let mut b = connect(&stack);
    send(&mut b, 77, &EnclaveRequest::Infer { model: "breast_cancer".into() }, &vec![0u8; 900 * 1024]);
    let reply = recv(&mut b).unwrap();
    assert_eq!(reply.id, 77);
    match reply.body {
        EnclaveResponse::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Unavailable, "{}", e.message);
            assert!(e.message.contains("budget"), "{}", e.message);
            assert_eq!(e.retry_after_secs, Some(1));
        }
        other => panic!("{other:?}"),
    }
    // B's connection is still in service, and once A gives up its charge, big frames fit again.
    send(&mut b, 78, &EnclaveRequest::Status, b"");
    assert!(matches!(recv(&mut b).unwrap().body, EnclaveResponse::Status { ready: true, .. }));
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    send(&mut b, 79, &EnclaveRequest::Infer { model: "breast_cancer".into() }, &vec![0u8; 900 * 1024]);
    match recv(&mut b).unwrap().body {
        // Not an envelope at all: refused for what it is, no longer for the budget.
        EnclaveResponse::Error(e) => assert!(e.message.contains("malformed envelope"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert_still_serving(&stack);
}
