//! A SOCKS5 client in raw bytes, so tests see every reply code (fast-socks5's client
//! panics on codes it does not know) and can send what no real client would.
//!
//! The functions here are async (tokio) and work on any `AsyncRead + AsyncWrite` stream,
//! an in-memory `tokio::io::duplex` too; [`blocking`] has the same handshake over
//! `std::net::TcpStream` for tests that run on threads in network namespaces. Both drive
//! the same [`wire::Handshake`] plan over the same [`wire`] byte format.
//!
//! Two levels:
//! - the whole handshake: [`handshake`] (greeting, optional username/password, a request;
//!   returns the [`Answer`]) and [`connect`] (to a proxy, CONNECT, fail unless it
//!   succeeded);
//! - one message at a time, for tests of the server's error paths: [`greet`], [`login`],
//!   [`request`].
//!
//! ```no_run
//! use mptcp_test_support::socks::{self, Target};
//!
//! # async fn run(proxy: std::net::SocketAddr, echo: std::net::SocketAddr) -> anyhow::Result<()> {
//! let mut relayed = socks::connect(proxy, Target::Addr(echo), Some(("alice", "s3cret"))).await?;
//!
//! let mut stream = tokio::net::TcpStream::connect(proxy).await?;
//! assert_eq!(socks::greet(&mut stream, &[socks::NO_AUTH]).await?, socks::NO_AUTH);
//! let code = socks::request(&mut stream, 0x09, &socks::addr_bytes(echo)).await?;
//! assert_eq!(code, 0x07, "command not supported");
//! # Ok(())
//! # }
//! ```

pub mod blocking;
pub mod wire;

use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use wire::{
    CONNECT, NO_ACCEPTABLE_METHOD, NO_AUTH, USERNAME_PASSWORD, addr_bytes, name_bytes, target_bytes,
};
use wire::{Exchange, Handshake};

/// Where the proxy should connect.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An address (ATYP 1 or 4).
    Addr(SocketAddr),
    /// A name for the proxy to resolve (ATYP 3).
    Name(&'a str, u16),
}

/// What the proxy answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The proxy accepted none of the offered methods (0xFF) or refused the password
    /// (the RFC 1929 status, non-zero).
    AuthRefused(u8),
    /// The reply code of the request (0 = succeeded).
    Reply(u8),
}

impl Answer {
    /// `Ok` for a successful reply, else an error naming the answer.
    ///
    /// # Errors
    /// Any answer but `Reply(0)` (`ConnectionRefused`).
    pub fn ensure_succeeded(self) -> io::Result<()> {
        match self {
            Answer::Reply(0) => Ok(()),
            other => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("proxy answered {other:?}"),
            )),
        }
    }
}

/// Greets offering `methods` and returns the one the server chose
/// ([`NO_ACCEPTABLE_METHOD`]: none).
///
/// # Errors
/// I/O errors (the server closing too), or an answer that is not SOCKS5.
pub async fn greet<S>(stream: &mut S, methods: &[u8]) -> io::Result<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = Exchange {
        send: wire::greeting(methods),
        receive: 2,
    };
    wire::method_choice(&exchange(stream, &greeting).await?)
}

/// RFC 1929 sub-negotiation, after the server chose [`USERNAME_PASSWORD`]; returns the
/// status (0 = success).
///
/// # Errors
/// I/O errors, or an answer without the RFC 1929 version.
pub async fn login<S>(stream: &mut S, user: &str, pass: &str) -> io::Result<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let login = Exchange {
        send: wire::login(user, pass),
        receive: 2,
    };
    wire::auth_status(&exchange(stream, &login).await?)
}

/// Sends a request (`command` and an encoded `address`, e.g. from [`addr_bytes`]) after
/// the greeting, and returns the reply code.
///
/// # Errors
/// I/O errors, or a reply that is not SOCKS5.
pub async fn request<S>(stream: &mut S, command: u8, address: &[u8]) -> io::Result<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match drive(stream, Handshake::request_only(command, address)).await? {
        Answer::Reply(code) | Answer::AuthRefused(code) => Ok(code),
    }
}

/// The whole handshake (see [`wire::Handshake`]): greets, authenticates if `auth` is
/// given, and sends `command` (e.g. [`CONNECT`]) for `target`. Leaves the stream
/// positioned after the reply. Not time-bounded: bound the test or wrap it in a timeout.
///
/// # Errors
/// I/O errors, including the proxy closing the connection, or bytes that are not SOCKS5.
pub async fn handshake<S>(
    stream: &mut S,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
    command: u8,
) -> io::Result<Answer>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    drive(stream, Handshake::new(target, auth, command)).await
}

/// Connects to `proxy`, CONNECTs to `target` through it and returns the relayed stream.
///
/// # Errors
/// The proxy cannot be reached, or answers anything but success.
pub async fn connect(
    proxy: SocketAddr,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to the proxy at {proxy}"))?;
    handshake(&mut stream, target, auth, CONNECT)
        .await?
        .ensure_succeeded()
        .with_context(|| format!("CONNECT to {target:?} through {proxy}"))?;
    Ok(stream)
}

/// True once the server has closed the connection (EOF or reset), within `limit`.
///
/// # Errors
/// The server sent data instead.
pub async fn closed_within<S>(stream: &mut S, limit: Duration) -> anyhow::Result<bool>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(true),
        Ok(Ok(n)) => bail!("unexpected {n} bytes: {:?}", &buf[..n]),
        Err(_) => Ok(false),
    }
}

/// Runs `plan` to its answer over `stream`.
async fn drive<S>(stream: &mut S, mut plan: Handshake<'_>) -> io::Result<Answer>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = plan.start();
    loop {
        match plan.received(&exchange(stream, &next).await?)? {
            ControlFlow::Continue(step) => next = step,
            ControlFlow::Break(answer) => return Ok(answer),
        }
    }
}

/// Sends `step.send`, reads `step.receive` bytes.
async fn exchange<S>(stream: &mut S, step: &Exchange) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&step.send).await?;
    let mut received = vec![0; step.receive];
    stream.read_exact(&mut received).await?;
    Ok(received)
}
