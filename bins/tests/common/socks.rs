//! A SOCKS5 client in raw bytes, so tests see every reply code (fast-socks5's client
//! panics on codes it does not know).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

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
    /// The reply code of the CONNECT (0 = succeeded).
    Reply(u8),
}

/// Greets, authenticates if `auth` is given, and sends a request with `command`
/// (1 = CONNECT). Leaves the stream positioned after the reply.
///
/// # Errors
/// I/O errors, including the proxy closing the connection.
pub fn request(
    stream: &mut TcpStream,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
    command: u8,
) -> io::Result<Answer> {
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let method = if auth.is_some() { 2 } else { 0 };
    stream.write_all(&[5, 1, method])?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice)?;
    if choice[1] == 0xFF {
        return Ok(Answer::AuthRefused(0xFF));
    }
    if choice[1] == 2 {
        let (user, pass) = auth.unwrap_or(("", ""));
        let mut msg = vec![1, user.len() as u8];
        msg.extend_from_slice(user.as_bytes());
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        stream.write_all(&msg)?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status)?;
        if status[1] != 0 {
            return Ok(Answer::AuthRefused(status[1]));
        }
    }
    let mut req = vec![5, command, 0];
    let port = match target {
        Target::Addr(addr) => {
            match addr.ip() {
                IpAddr::V4(a) => {
                    req.push(1);
                    req.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    req.push(4);
                    req.extend_from_slice(&a.octets());
                }
            }
            addr.port()
        }
        Target::Name(name, port) => {
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name.as_bytes());
            port
        }
    };
    req.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&req)?;
    read_reply(stream)
}

/// Reads a SOCKS5 reply (the bound address is read and dropped).
pub fn read_reply(stream: &mut TcpStream) -> io::Result<Answer> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head)?;
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
        _ => 0,
    };
    let mut skip = vec![0u8; rest];
    stream.read_exact(&mut skip)?;
    Ok(Answer::Reply(head[1]))
}

/// Connects through the proxy and returns the relayed stream.
///
/// # Errors
/// When the proxy answers anything but success.
pub fn connect(
    proxy: SocketAddr,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(10))
        .with_context(|| format!("connecting to the proxy at {proxy}"))?;
    match request(&mut stream, target, auth, 1)? {
        Answer::Reply(0) => {
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            Ok(stream)
        }
        other => bail!("proxy answered {other:?} for {target:?}"),
    }
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
