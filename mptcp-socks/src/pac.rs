//! A proxy auto-config (PAC) file on the SOCKS port: a phone or laptop on the LAN points
//! its "automatic proxy configuration" at `http://BOX:1080/proxy.pac` (or finds
//! `/wpad.dat`) and is sent to the proxy. Only a request that starts with `G` (an HTTP
//! `GET`, never a SOCKS5 greeting) comes here; it gets the file or 404 and is closed.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;

/// The most of a request read before giving up on it.
const REQUEST_LIMIT: usize = 4096;

/// The PAC file pointing at `proxy`: SOCKS5 (and `SOCKS`, which Apple's and some other
/// clients read as SOCKS5).
pub(crate) fn file(proxy: SocketAddr) -> String {
    format!(
        "function FindProxyForURL(url, host) {{\n  return \"SOCKS5 {proxy}; SOCKS {proxy}\";\n}}\n"
    )
}

/// Answers an HTTP request whose first byte (`G`) was read already: the PAC file for
/// `GET /proxy.pac` and `GET /wpad.dat`, 404 for anything else.
pub(crate) async fn answer<S>(stream: &mut S, proxy: SocketAddr) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = vec![b'G'];
    let mut buf = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() > REQUEST_LIMIT {
            return Err(Error::Protocol("HTTP request header too long".into()));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(Error::Protocol("HTTP request ended early".into()));
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, path) = (words.next(), words.next());
    let response = match (method, path) {
        (Some(b"GET"), Some(b"/proxy.pac" | b"/wpad.dat")) => {
            let body = file(proxy);
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/x-ns-proxy-autoconfig\r\n\
                 Content-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        _ => "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 46\r\n\
              Connection: close\r\n\r\nthis is a SOCKS5 proxy; its PAC is /proxy.pac\n"
            .to_owned(),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(request: &str) -> String {
        let (mut ours, mut theirs) = tokio::io::duplex(8192);
        theirs
            .write_all(request.strip_prefix('G').expect("starts with G").as_bytes())
            .await
            .expect("write");
        answer(&mut ours, "192.168.1.10:1080".parse().expect("addr"))
            .await
            .expect("answered");
        drop(ours);
        let mut out = String::new();
        theirs.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn the_pac_file_points_at_the_address_the_client_reached() {
        for path in ["/proxy.pac", "/wpad.dat"] {
            let out = ask(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
            assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
            assert!(out.contains("application/x-ns-proxy-autoconfig"), "{out}");
            assert!(
                out.ends_with(&file("192.168.1.10:1080".parse().expect("addr"))),
                "{out}"
            );
            assert!(out.contains("\"SOCKS5 192.168.1.10:1080; SOCKS 192.168.1.10:1080\""));
        }
        let out = ask("GET /../etc/passwd HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.0 404"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).expect("body");
        assert!(
            out.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{out:?}"
        );
    }
}
