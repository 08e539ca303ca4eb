//! Serving the client API: hyper's HTTP/1.1 connections around the axum router, with the read timeouts a
//! server that faces the internet needs.
//!
//! `axum::serve` sets none: a client that trickles its request head a byte at a time, or its body, holds
//! its connection (a task, a socket, buffers) for as long as it likes, and enough of them exhaust the
//! parent (slowloris). Here, with [`Timeouts`]:
//!
//! - a request head must arrive whole within `header` of the connection opening or of the previous answer
//!   on it (hyper's header read timeout; it also closes keep-alive connections idle that long, which
//!   clients' pools expect);
//! - a request body must arrive whole within `body` of its head: a body still arriving then fails with
//!   [`BodyTimeout`], which the API answers `408 Request Timeout` (and the connection is closed).
//!
//! A slow client costs only its own connection: each connection is its own task, so the others are served
//! meanwhile. On shutdown the listener closes, each connection finishes the request it is serving (at most
//! `drain`), and the rest are dropped.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::serve::Listener as _;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use crate::http::HttpListener;

/// The client API's read timeouts (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request head must arrive within this (also: the longest idle keep-alive).
    pub header: Duration,
    /// A request body must arrive within this of its head.
    pub body: Duration,
    /// How long requests in flight may take to finish on shutdown.
    pub drain: Duration,
}

/// A request body still arriving when its time was up.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A body that fails with [`BodyTimeout`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router with every request body under the `body` deadline.
pub fn with_body_deadline(router: Router, body: Duration) -> Router {
    router.layer(axum::middleware::map_request(move |request: Request| async move {
        request.map(|inner| {
            if hyper::body::Body::is_end_stream(&inner) {
                return inner;
            }
            let deadline = Box::pin(tokio::time::sleep(body));
            Body::new(DeadlineBody { inner, deadline, timeout: body })
        })
    }))
}

/// Serves `router` on `listener` under `timeouts` until `shutdown` resolves, then drains (see the module
/// documentation).
pub async fn serve(
    mut listener: HttpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = with_body_deadline(router, timeouts.body);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(timeouts.header).keep_alive(true);
    // Each connection task holds a receiver: the sender sees them all gone when every connection ended.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                // Read timeouts and clients that went away end here; neither is the server's fault.
                tracing::debug!(error = %e, "client connection ended");
            }
            drop(stop);
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(timeouts.drain, stop_tx.closed()).await.is_err() {
        tracing::warn!(drain = ?timeouts.drain, "requests still in flight after the drain time; closing them");
    }
    Ok(())
}

/// Whether a body error is a [`BodyTimeout`] (anywhere in its chain).
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<BodyTimeout>() {
            return true;
        }
        cur = c.source();
    }
    false
}
