//! The SOCKS5 client over `std::net::TcpStream`, for tests that run on threads inside
//! network namespaces: the same [`Handshake`] plan as the async client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context;

use super::wire::{CONNECT, Exchange, Handshake};
pub use super::{Answer, Target};

/// How long each read of the handshake may wait for the proxy.
const HANDSHAKE_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a read of a relayed stream from [`connect`] may wait.
const RELAY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Greets, authenticates if `auth` is given, and sends a request with `command`
/// (1 = CONNECT) for `target` (see [`Handshake`]). Leaves the stream positioned after the
/// reply, with a 15 s read timeout.
///
/// # Errors
/// I/O errors, including the proxy closing the connection or not answering in time, or
/// bytes that are not SOCKS5.
pub fn handshake(
    stream: &mut TcpStream,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
    command: u8,
) -> io::Result<Answer> {
    stream.set_read_timeout(Some(HANDSHAKE_READ_TIMEOUT))?;
    let mut plan = Handshake::new(target, auth, command);
    let mut next = plan.start();
    loop {
        match plan.received(&exchange(stream, &next)?)? {
            ControlFlow::Continue(step) => next = step,
            ControlFlow::Break(answer) => return Ok(answer),
        }
    }
}

/// Connects through the proxy and returns the relayed stream (30 s read timeout).
///
/// # Errors
/// The proxy cannot be reached within 10 s, or answers anything but success.
pub fn connect(
    proxy: SocketAddr,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(10))
        .with_context(|| format!("connecting to the proxy at {proxy}"))?;
    handshake(&mut stream, target, auth, CONNECT)?
        .ensure_succeeded()
        .with_context(|| format!("CONNECT to {target:?} through {proxy}"))?;
    stream.set_read_timeout(Some(RELAY_READ_TIMEOUT))?;
    Ok(stream)
}

/// Whether the peer closed the connection (EOF or reset) within `timeout`, reading and
/// dropping whatever it sends before that.
pub fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends `step.send`, reads `step.receive` bytes.
fn exchange(stream: &mut TcpStream, step: &Exchange) -> io::Result<Vec<u8>> {
    stream.write_all(&step.send)?;
    let mut received = vec![0; step.receive];
    stream.read_exact(&mut received)?;
    Ok(received)
}
