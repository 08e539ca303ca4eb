//! The typed framed connection: the one place that turns a stream into messages and back.
//!
//! A frame is `u32 length ‖ payload` ([`veil_protocol::frame`]); a payload is one message
//! ([`veil_protocol::message`]): a ten-byte prefix, a CBOR body, an attachment. Reading and writing are
//! separate halves ([`FrameReader`], [`FrameWriter`]) so that a connection can have one reader loop and
//! answers written by whoever computed them.
//!
//! Memory: a frame's announced length is checked against the maximum before anything is read, and the
//! payload buffer grows as bytes actually arrive (it never trusts the announced length for one large
//! allocation), so a peer that announces 16 MiB and sends ten bytes costs ten bytes. Copies: the
//! attachment is written straight from the caller's buffer (vectored, after the small head) and read into
//! the frame buffer once; [`Incoming::into_attachment`] hands that buffer on without copying.
use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use veil_protocol::frame::{self, FrameError, HEADER_LEN};
use veil_protocol::message::{self, Body, PREFIX_LEN, ProtoError};

/// How much of an announced frame is allocated before its bytes arrive; beyond that the buffer grows with
/// what is read.
const INITIAL_ALLOCATION: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The frame itself was refused (too large, empty, truncated).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Why a connection operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The frame arrived but does not hold a message this side understands.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The message does not fit in a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Writing failed: the peer is gone.
    #[error("write failed: {0}")]
    Write(io::Error),
    /// An answer to another request arrived on a one-request-at-a-time connection.
    #[error("the peer answered request {got} to request {want}")]
    WrongId { want: u64, got: u64 },
}

impl ConnError {
    /// True when the peer simply closed the connection between messages.
    pub fn is_closed(&self) -> bool {
        matches!(self, ConnError::Read(ReadError::Closed))
    }
}

/// A received message: id, body, and the frame buffer holding its attachment.
#[derive(Debug)]
pub struct Incoming<T> {
    pub id: u64,
    pub body: T,
    payload: BytesMut,
    attachment_start: usize,
}

impl<T> Incoming<T> {
    /// The attachment's bytes (empty for kinds without one).
    pub fn attachment(&self) -> &[u8] {
        &self.payload[self.attachment_start..]
    }

    /// The attachment as an owned buffer, without copying (the head is split off the same allocation).
    pub fn into_attachment(mut self) -> BytesMut {
        self.payload.split_off(self.attachment_start)
    }

    /// Splits into body and attachment.
    pub fn into_parts(mut self) -> (u64, T, BytesMut) {
        let attachment = self.payload.split_off(self.attachment_start);
        (self.id, self.body, attachment)
    }
}

/// The reading half.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader { inner, max_frame }
    }

    /// The largest frame this reader accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Reads a frame header and returns the payload length it announces, checked against the maximum.
    pub async fn read_len(&mut self) -> Result<usize, ReadError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self.inner.read(&mut header[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Err(ReadError::Closed)
                } else {
                    Err(FrameError::Truncated { expected: HEADER_LEN, got }.into())
                };
            }
            got += n;
        }
        Ok(frame::check_header(header, self.max_frame)?)
    }

    /// Reads `len` payload bytes into a buffer that grows as they arrive.
    pub async fn read_payload(&mut self, len: usize) -> Result<BytesMut, ReadError> {
        let mut buf = BytesMut::with_capacity(len.min(INITIAL_ALLOCATION));
        while buf.len() < len {
            let want = len - buf.len();
            if buf.capacity() == buf.len() {
                // Double what has arrived, never beyond what was announced.
                buf.reserve(want.min(buf.len().max(INITIAL_ALLOCATION)));
            }
            let room = (buf.capacity() - buf.len()).min(want);
            let n = (&mut self.inner).take(room as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(FrameError::Truncated { expected: len, got: buf.len() }.into());
            }
        }
        Ok(buf)
    }

    /// Reads and discards `len` payload bytes, returning the message prefix (version, id) when the payload
    /// was long enough to have one: how a receiver refuses a frame it will not buffer.
    pub async fn skip_payload(&mut self, len: usize) -> Result<Option<(u16, u64)>, ReadError> {
        let mut scratch = [0u8; 8192];
        let mut prefix = [0u8; PREFIX_LEN];
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(scratch.len());
            let n = self.inner.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(FrameError::Truncated { expected: len, got: done }.into());
            }
            if done < PREFIX_LEN {
                let k = (PREFIX_LEN - done).min(n);
                prefix[done..done + k].copy_from_slice(&scratch[..k]);
            }
            done += n;
        }
        Ok(if len >= PREFIX_LEN { message::peek_prefix(&prefix).ok() } else { None })
    }

    /// Reads one whole frame's payload.
    pub async fn read_frame(&mut self) -> Result<BytesMut, ReadError> {
        let len = self.read_len().await?;
        self.read_payload(len).await
    }

    /// Reads and decodes one message.
    pub async fn recv<T: Body>(&mut self) -> Result<Incoming<T>, ConnError> {
        let payload = self.read_frame().await?;
        decode(payload)
    }

    /// The underlying stream, for a connection that stops being framed (the KMS relay).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Decodes a frame's payload into a message.
pub fn decode<T: Body>(payload: BytesMut) -> Result<Incoming<T>, ConnError> {
    let decoded = message::decode::<T>(&payload)?;
    Ok(Incoming { id: decoded.id, body: decoded.body, payload, attachment_start: decoded.attachment.start })
}

/// The writing half.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    max_frame: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W, max_frame: usize) -> Self {
        FrameWriter { inner, max_frame }
    }

    /// The largest frame this writer sends.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sends one message: its head, then the attachment straight from the caller's buffer.
    pub async fn send<T: Body>(&mut self, id: u64, body: &T, attachment: &[u8]) -> Result<(), ConnError> {
        let head = message::encode_head(id, body)?;
        self.send_encoded(&head, attachment).await
    }

    /// Sends a head made by [`message::encode_head`] and its attachment as one frame (for a writer task
    /// that receives encoded heads).
    pub async fn send_encoded(&mut self, head: &[u8], attachment: &[u8]) -> Result<(), ConnError> {
        let len = head.len() + attachment.len();
        if len == 0 {
            return Err(FrameError::Empty.into());
        }
        if len > self.max_frame || len > u32::MAX as usize {
            return Err(FrameError::TooLarge { len, max: self.max_frame }.into());
        }
        let header = (len as u32).to_be_bytes();
        write_all_vectored(&mut self.inner, &mut [IoSlice::new(&header), IoSlice::new(head), IoSlice::new(attachment)])
            .await
            .map_err(ConnError::Write)?;
        self.inner.flush().await.map_err(ConnError::Write)
    }

    /// Writes raw bytes (a hand-made frame, for tests of hostile peers).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes).await?;
        self.inner.flush().await
    }

    /// The underlying stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Both halves over one stream, for request-and-answer connections (host services, tests).
#[derive(Debug)]
pub struct Connection<S> {
    reader: FrameReader<tokio::io::ReadHalf<S>>,
    writer: FrameWriter<tokio::io::WriteHalf<S>>,
    next_id: u64,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    pub fn new(stream: S, max_frame: usize) -> Self {
        let (r, w) = tokio::io::split(stream);
        Connection { reader: FrameReader::new(r, max_frame), writer: FrameWriter::new(w, max_frame), next_id: 1 }
    }

    /// Sends a request and waits for its answer, which must carry the same id.
    pub async fn call<Q: Body, A: Body>(&mut self, request: &Q, attachment: &[u8]) -> Result<Incoming<A>, ConnError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer.send(id, request, attachment).await?;
        let answer = self.reader.recv::<A>().await?;
        if answer.id != id {
            return Err(ConnError::WrongId { want: id, got: answer.id });
        }
        Ok(answer)
    }

    /// The halves.
    pub fn split(self) -> (FrameReader<tokio::io::ReadHalf<S>>, FrameWriter<tokio::io::WriteHalf<S>>) {
        (self.reader, self.writer)
    }

    /// The stream again, when the connection stops being framed (after a relay is granted). Nothing is
    /// buffered in either half, so no byte is lost.
    pub fn into_inner(self) -> S
    where
        S: Unpin,
    {
        self.reader.into_inner().unsplit(self.writer.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_protocol::message::{EnclaveRequest, EnclaveResponse, HostResponse};

    #[tokio::test]
    async fn messages_and_attachments_cross() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut client = Connection::new(a, 1 << 20);
        let (mut r, mut w) = Connection::new(b, 1 << 20).split();
        let server = tokio::spawn(async move {
            let req = r.recv::<EnclaveRequest>().await.unwrap();
            assert_eq!(req.body, EnclaveRequest::Infer { model: "iris".into() });
            let echo = req.attachment().to_vec();
            w.send(req.id, &EnclaveResponse::Infer, &echo).await.unwrap();
        });
        let answer: Incoming<EnclaveResponse> =
            client.call(&EnclaveRequest::Infer { model: "iris".into() }, &[5u8; 70_000]).await.unwrap();
        assert_eq!(answer.body, EnclaveResponse::Infer);
        assert_eq!(answer.into_attachment().as_ref(), &[5u8; 70_000][..]);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_refused() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 1024);
        a.write_all(&[0, 0, 8, 0]).await.unwrap();
        assert!(matches!(r.read_len().await, Err(ReadError::Frame(FrameError::TooLarge { len: 2048, max: 1024 }))));

        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 1024);
        a.write_all(&[0, 0, 0, 10, 1, 2, 3]).await.unwrap();
        drop(a);
        let err = r.read_frame().await.unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::Truncated { expected: 10, got: 3 })), "{err}");
    }

    #[tokio::test]
    async fn a_lying_length_costs_only_what_arrives() {
        // 16 MiB announced, 10 bytes sent, then the peer stops: the buffer never grew past its first step.
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 1 << 30);
        let len = r.read_len_after(&mut a, 16 << 20).await;
        assert_eq!(len, 16 << 20);
        a.write_all(&[1; 10]).await.unwrap();
        drop(a);
        let err = r.read_payload(16 << 20).await.unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::Truncated { got: 10, .. })), "{err}");
    }

    #[tokio::test]
    async fn skipped_frames_still_name_their_request() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, 1 << 20);
        let mut r = FrameReader::new(b, 1 << 20);
        w.send(42, &HostResponse::ModelChunk, &[1u8; 20_000]).await.unwrap();
        w.send(43, &HostResponse::RelayReady, b"").await.unwrap();
        let len = r.read_len().await.unwrap();
        assert_eq!(r.skip_payload(len).await.unwrap(), Some((veil_protocol::message::PROTOCOL_VERSION, 42)));
        assert_eq!(r.recv::<HostResponse>().await.unwrap().id, 43);
    }

    impl<R: AsyncRead + Unpin> FrameReader<R> {
        async fn read_len_after<W: AsyncWrite + Unpin>(&mut self, w: &mut W, len: u32) -> usize {
            w.write_all(&len.to_be_bytes()).await.unwrap();
            self.read_len().await.unwrap()
        }
    }
}
