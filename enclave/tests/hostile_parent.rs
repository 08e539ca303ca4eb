//! The enclave fetching its model from a parent that lies: every answer is checked.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure message
use std::time::Duration;

use veil_enclave::host::HostClient;
use veil_protocol::message::{ErrorKind, ErrorReply, HostRequest, HostResponse};
use veil_runtime::conn::Connection;
use veil_runtime::transport::{Address, Listener};

const MAX: usize = 1 << 20;

/// What the fake parent answers: a message and its attachment.
type Answer = (HostResponse, Vec<u8>);

fn chunk(data: Vec<u8>) -> Answer {
    (HostResponse::ModelChunk, data)
}

fn plain(r: HostResponse) -> Answer {
    (r, Vec::new())
}

/// A fake parent that answers each request with whatever `answer` says.
async fn fake_parent(answer: fn(&HostRequest) -> Answer) -> (Address, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let addr: Address = format!("unix://{}/host.sock", dir.path().display()).parse().unwrap();
    let listener = Listener::bind(&addr).await.unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = Connection::new(s, MAX).split();
        while let Ok(req) = r.recv::<HostRequest>().await {
            let (body, attachment) = answer(&req.body);
            if w.send(req.id, &body, &attachment).await.is_err() {
                break;
            }
        }
    });
    (addr, dir)
}

async fn fetch(answer: fn(&HostRequest) -> Answer, max_bytes: u64) -> anyhow::Result<veil_enclave::host::FetchedModel> {
    let (addr, _dir) = fake_parent(answer).await;
    let mut client = HostClient::connect(&addr, MAX, Duration::from_secs(2)).await?;
    client.fetch_model("m", max_bytes).await
}

#[tokio::test]
async fn an_honest_parent_gives_the_bytes_and_their_digest() {
    let model = fetch(
        |r| match r {
            HostRequest::ModelInfo { .. } => plain(HostResponse::ModelInfo { size: 10 }),
            HostRequest::ModelChunk { offset, len, .. } => chunk(vec![(*offset % 251) as u8; *len as usize]),
            _ => plain(HostResponse::RelayReady),
        },
        100,
    )
    .await
    .unwrap();
    assert_eq!(&model.bytes[..], &[0u8; 10]);
    let want = ring::digest::digest(&ring::digest::SHA384, &[0u8; 10]);
    assert_eq!(&model.sha384[..], want.as_ref());
}

#[tokio::test]
async fn short_chunks_are_refused() {
    let err = fetch(
        |r| match r {
            HostRequest::ModelInfo { .. } => plain(HostResponse::ModelInfo { size: 10 }),
            HostRequest::ModelChunk { .. } => chunk(vec![1; 3]),
            _ => plain(HostResponse::RelayReady),
        },
        100,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("sent 3 bytes of model \"m\" at offset 0; 10 were asked"), "{err}");
}

#[tokio::test]
async fn long_chunks_are_refused() {
    let err = fetch(
        |r| match r {
            HostRequest::ModelInfo { .. } => plain(HostResponse::ModelInfo { size: 10 }),
            HostRequest::ModelChunk { .. } => chunk(vec![1; 11]),
            _ => plain(HostResponse::RelayReady),
        },
        100,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("sent 11 bytes"), "{err}");
}

#[tokio::test]
async fn a_huge_declared_size_is_refused_before_any_allocation() {
    let err = fetch(|_| plain(HostResponse::ModelInfo { size: u64::MAX }), 1 << 30).await.unwrap_err();
    assert!(err.to_string().contains("more than the enclave accepts"), "{err}");
    let err = fetch(|_| plain(HostResponse::ModelInfo { size: 0 }), 1 << 30).await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn wrong_answers_and_errors_are_reported() {
    let err = fetch(|_| chunk(Vec::new()), 100).await.unwrap_err();
    assert!(err.to_string().contains("unexpected answer to ModelInfo"), "{err}");
    let err = fetch(|_| plain(HostResponse::Error(ErrorReply::new(ErrorKind::NotFound, "no such model"))), 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot serve model \"m\": no such model"), "{err}");
}

#[tokio::test]
async fn an_absent_parent_is_reported_after_the_patience_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let addr: Address = format!("unix://{}/nobody.sock", dir.path().display()).parse().unwrap();
    let err = HostClient::connect(&addr, MAX, Duration::from_millis(300)).await.unwrap_err();
    assert!(err.to_string().contains("could not reach the parent's host services"), "{err}");
}
