//! Addresses, listeners and dialers.
//!
//! One address syntax everywhere:
//!
//! | scheme | example | used for |
//! |---|---|---|
//! | `vsock://CID:PORT` | `vsock://16:5000`, `vsock://any:5000` | parent ↔ enclave on Nitro hardware |
//! | `tcp://HOST:PORT` | `tcp://127.0.0.1:8080` | clients, and tests off hardware |
//! | `unix://PATH` | `unix:///run/veil/enclave.sock` | parent ↔ enclave off hardware |
//!
//! These machines have no vsock loopback, so every vsock endpoint also takes `tcp://` and `unix://`; the
//! code above this module cannot tell them apart. Frames and messages over these streams: [`crate::conn`].
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener, VsockStream};

/// Longest address string accepted (a Unix socket path is at most 108 bytes on Linux anyway).
const MAX_ADDRESS_LEN: usize = 512;

/// Where to listen or dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An AF_VSOCK endpoint. CID 3 is the parent as the enclave sees it; `any` listens on every CID.
    Vsock { cid: u32, port: u32 },
    /// A TCP endpoint, `host:port` (the host may be a name, an IPv4 or a bracketed IPv6 address).
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

/// Why an address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {reason} (expected vsock://CID:PORT, tcp://HOST:PORT or unix://PATH)")]
pub struct AddressError {
    input: String,
    reason: String,
}

impl AddressError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        let input: String = input.chars().take(80).collect();
        Self { input, reason: reason.into() }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::new(s, format!("longer than {MAX_ADDRESS_LEN} bytes")));
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(AddressError::new(s, "no scheme"));
        };
        match scheme {
            "vsock" => {
                let (cid, port) = rest.rsplit_once(':').ok_or_else(|| AddressError::new(s, "vsock needs CID:PORT"))?;
                let cid = match cid {
                    "any" | "ANY" => VMADDR_CID_ANY,
                    "host" | "parent" => 3,
                    c => c
                        .parse::<u32>()
                        .map_err(|_| AddressError::new(s, format!("CID {c:?} is not a number (or `any`, `parent`)")))?,
                };
                let port =
                    port.parse::<u32>().map_err(|_| AddressError::new(s, format!("port {port:?} is not a number")))?;
                Ok(Address::Vsock { cid, port })
            }
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| AddressError::new(s, "tcp needs HOST:PORT"))?;
                if host.is_empty() {
                    return Err(AddressError::new(s, "empty host"));
                }
                port.parse::<u16>()
                    .map_err(|_| AddressError::new(s, format!("port {port:?} is not a number from 0 to 65535")))?;
                Ok(Address::Tcp(rest.to_owned()))
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(AddressError::new(s, "empty path"));
                }
                if rest.len() > 107 {
                    return Err(AddressError::new(s, "Unix socket paths are at most 107 bytes"));
                }
                Ok(Address::Unix(PathBuf::from(rest)))
            }
            other => Err(AddressError::new(s, format!("unknown scheme {other:?}"))),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } if *cid == VMADDR_CID_ANY => write!(f, "vsock://any:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A bound listener of any kind.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Vsock(VsockListener),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file left by a dead process is replaced; any other file is not.
    pub async fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Tcp(hp) => Ok(Listener::Tcp(TcpListener::bind(hp.as_str()).await?)),
            Address::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() && UnixStream::connect(path).await.is_err() {
                        std::fs::remove_file(path)?;
                    }
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
            Address::Vsock { cid, port } => Ok(Listener::Vsock(VsockListener::bind(VsockAddr::new(*cid, *port))?)),
        }
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn local_address(&self) -> io::Result<Address> {
        match self {
            Listener::Tcp(l) => Ok(Address::Tcp(l.local_addr()?.to_string())),
            Listener::Unix(_, path) => Ok(Address::Unix(path.clone())),
            Listener::Vsock(l) => {
                let a = l.local_addr()?;
                Ok(Address::Vsock { cid: a.cid(), port: a.port() })
            }
        }
    }

    /// Accepts one connection; returns the stream and a printable peer name.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), format!("tcp://{peer}")))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), format!("unix://{}", path.display())))
            }
            Listener::Vsock(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Vsock(s), format!("vsock://{}:{}", peer.cid(), peer.port())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A connected stream of any kind.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Vsock(VsockStream),
}

/// Dials `addr`.
pub async fn connect(addr: &Address) -> io::Result<Stream> {
    match addr {
        Address::Tcp(hp) => {
            let s = TcpStream::connect(hp.as_str()).await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        Address::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        Address::Vsock { cid, port } => Ok(Stream::Vsock(VsockStream::connect(VsockAddr::new(*cid, *port)).await?)),
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Vsock(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Vsock(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!("vsock://16:5000".parse::<Address>().unwrap(), Address::Vsock { cid: 16, port: 5000 });
        assert_eq!("vsock://any:5000".parse::<Address>().unwrap(), Address::Vsock { cid: VMADDR_CID_ANY, port: 5000 });
        assert_eq!("vsock://parent:8000".parse::<Address>().unwrap(), Address::Vsock { cid: 3, port: 8000 });
        assert_eq!("tcp://127.0.0.1:0".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:0".into()));
        assert_eq!("tcp://[::1]:80".parse::<Address>().unwrap(), Address::Tcp("[::1]:80".into()));
        assert_eq!("unix:///tmp/x.sock".parse::<Address>().unwrap(), Address::Unix("/tmp/x.sock".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in ["vsock://16:5000", "vsock://any:5000", "tcp://localhost:80", "unix:///tmp/a"] {
            assert_eq!(s.parse::<Address>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_addresses_saying_why() {
        let cases = [
            ("16:5000", "no scheme"),
            ("vsock://16", "vsock needs CID:PORT"),
            ("vsock://x:1", "is not a number"),
            ("vsock://3:99999999999", "port"),
            ("tcp://host", "tcp needs HOST:PORT"),
            ("tcp://:80", "empty host"),
            ("tcp://h:70000", "0 to 65535"),
            ("unix://", "empty path"),
            ("http://x:1", "unknown scheme"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Address>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
        let long = format!("unix:///{}", "a".repeat(200));
        assert!(long.parse::<Address>().unwrap_err().to_string().contains("107"));
    }

    #[tokio::test]
    async fn vsock_without_a_device_fails_cleanly() {
        // No vsock transport here: binding or dialing must be an io::Error, not a panic.
        let addr: Address = "vsock://any:5999".parse().unwrap();
        let _ = Listener::bind(&addr).await; // may succeed where a vsock module is loaded
        assert!(connect(&"vsock://123456:5999".parse().unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn messages_cross_tcp_and_unix() {
        use crate::conn::{Connection, FrameReader, FrameWriter};
        use veil_protocol::message::{EnclaveRequest, EnclaveResponse};
        let dir = tempfile::tempdir().unwrap();
        for addr in ["tcp://127.0.0.1:0".to_owned(), format!("unix://{}/s.sock", dir.path().display())] {
            let listener = Listener::bind(&addr.parse().unwrap()).await.unwrap();
            let bound = listener.local_address().unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = listener.accept().await.unwrap();
                let (r, w) = tokio::io::split(s);
                let (mut r, mut w) = (FrameReader::new(r, 1024), FrameWriter::new(w, 1024));
                let got = r.recv::<EnclaveRequest>().await.unwrap();
                w.send(got.id, &EnclaveResponse::Infer, got.attachment()).await.unwrap();
            });
            let mut c = Connection::new(connect(&bound).await.unwrap(), 1024);
            let answer =
                c.call::<_, EnclaveResponse>(&EnclaveRequest::Infer { model: "m".into() }, b"ping").await.unwrap();
            assert_eq!(answer.attachment(), b"ping");
            server.await.unwrap();
        }
    }
}
