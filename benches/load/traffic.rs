//! The servers behind the proxies and the traffic each measurement sends through them.

use super::*;

pub(crate) async fn bind(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(loopback(port)).await
}

pub(crate) async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    while let Ok((conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        tokio::spawn(handle(conn));
    }
}

/// Sends back whatever arrives, until EOF.
pub(crate) async fn echo_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

/// Reads a big-endian u64 N, then sends N bytes.
pub(crate) async fn source_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut left = conn.read_u64().await?;
    let buf = vec![0x5Au8; 256 << 10];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        conn.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    conn.shutdown().await
}

/// How the client reaches the servers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    Direct,
    Socks(&'static str, SocketAddr),
}

impl Via {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Socks(name, _) => name,
        }
    }

    pub(crate) async fn connect(self, target: SocketAddrV4) -> io::Result<TcpStream> {
        tokio::time::timeout(STEP_TIMEOUT, self.connect_unbounded(target))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }

    pub(crate) async fn connect_unbounded(self, target: SocketAddrV4) -> io::Result<TcpStream> {
        let Via::Socks(_, proxy) = self else {
            let conn = TcpStream::connect(target).await?;
            conn.set_nodelay(true)?;
            return Ok(conn);
        };
        let mut conn = TcpStream::connect(proxy).await?;
        conn.set_nodelay(true)?;
        // SOCKS5, no authentication, CONNECT to an IPv4 address, in raw bytes.
        socks::handshake(&mut conn, Target::Addr(target.into()), None, socks::CONNECT)
            .await?
            .ensure_succeeded()?;
        Ok(conn)
    }
}

pub(crate) struct Targets {
    pub(crate) echo: SocketAddrV4,
    pub(crate) source: SocketAddrV4,
}

/// One connection streaming `bulk_bytes` (or what arrives until `bulk_cap`): Gbit/s of
/// payload, timed from the request to the last byte, handshake excluded.
pub(crate) async fn bulk(via: Via, targets: &Targets, scale: Scale) -> anyhow::Result<f64> {
    let mut conn = via
        .connect(targets.source)
        .await
        .with_context(|| via.name())?;
    let mut buf = vec![0u8; 256 << 10];
    let start = Instant::now();
    let deadline = start + scale.bulk_cap;
    conn.write_u64(scale.bulk_bytes).await?;
    let mut got = 0u64;
    while got < scale.bulk_bytes {
        match tokio::time::timeout_at(deadline.into(), conn.read(&mut buf)).await {
            Ok(Ok(0)) => bail!("{}: bulk stream ended after {got} bytes", via.name()),
            Ok(Ok(n)) => got += n as u64,
            Ok(Err(e)) => return Err(e).context(via.name()),
            Err(_) => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if got < scale.bulk_bytes {
        println!(
            "load: {} bulk run hit its {:?} cap after {} MiB",
            via.name(),
            scale.bulk_cap,
            got >> 20
        );
    }
    Ok(got as f64 * 8.0 / secs / 1e9)
}

#[derive(Debug)]
pub(crate) struct ShortRound {
    pub(crate) failed: usize,
    pub(crate) per_sec: f64,
    /// One per successful connection.
    pub(crate) latencies: Vec<Duration>,
}

/// `short_conns` connections, `short_concurrency` at a time, each: connect, handshake,
/// echo `ECHO_BYTES`, close. Latency is per connection, from connect to the echo's last
/// byte.
pub(crate) async fn short_conns(
    via: Via,
    targets: &Targets,
    scale: Scale,
) -> anyhow::Result<ShortRound> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + scale.short_cap;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..scale.short_concurrency {
        let (next, failed, target) = (next.clone(), failed.clone(), targets.echo);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let payload = [0xA5u8; ECHO_BYTES];
            let mut back = [0u8; ECHO_BYTES];
            while next.fetch_add(1, Ordering::Relaxed) < scale.short_conns
                && Instant::now() < deadline
            {
                let t0 = Instant::now();
                let round = async {
                    let mut conn = via.connect(target).await?;
                    conn.write_all(&payload).await?;
                    conn.read_exact(&mut back).await?;
                    io::Result::Ok(back == payload)
                };
                match tokio::time::timeout(STEP_TIMEOUT, round).await {
                    Ok(Ok(true)) => latencies.push(t0.elapsed()),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(scale.short_conns);
    while let Some(part) = tasks.join_next().await {
        latencies.extend(part?);
    }
    let wall = start.elapsed().as_secs_f64();
    ensure!(
        !latencies.is_empty(),
        "{}: no short connection succeeded",
        via.name()
    );
    Ok(ShortRound {
        failed: failed.load(Ordering::Relaxed),
        per_sec: latencies.len() as f64 / wall,
        latencies,
    })
}

#[derive(Debug)]
pub(crate) struct Memory {
    pub(crate) idle_kib: u64,
    pub(crate) loaded_kib: u64,
    pub(crate) conns: usize,
}

impl Memory {
    pub(crate) fn per_conn_kib(&self) -> f64 {
        (self.loaded_kib as f64 - self.idle_kib as f64) / self.conns as f64
    }
}

/// RSS of a fresh proxy that has served one connection, then with `idle_conns` relayed connections open (each has
/// carried one small echo, so the relay is fully set up), which are then closed.
pub(crate) async fn measure_memory(
    via: Via,
    proxy: &Proxy,
    targets: &Targets,
    scale: Scale,
) -> anyhow::Result<Memory> {
    // One relayed connection first, so one-time setup does not count as per-connection.
    let mut warm = via.connect(targets.echo).await?;
    warm.write_all(b"ping").await?;
    warm.read_exact(&mut [0u8; 4]).await?;
    drop(warm);
    tokio::time::sleep(SETTLE).await;
    let idle_kib = proxy.rss_kib()?;
    let open = Arc::new(Mutex::new(Vec::with_capacity(scale.idle_conns)));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..scale.short_concurrency {
        let (open, next, target) = (open.clone(), next.clone(), targets.echo);
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < scale.idle_conns {
                let mut conn = via.connect(target).await?;
                conn.write_all(b"ping").await?;
                let mut back = [0u8; 4];
                conn.read_exact(&mut back).await?;
                open.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
            io::Result::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?.with_context(|| format!("{}: opening idle connections", via.name()))?;
    }
    tokio::time::sleep(SETTLE).await;
    let loaded_kib = proxy.rss_kib()?;
    let conns = open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .count();
    tokio::time::sleep(SETTLE).await;
    Ok(Memory {
        idle_kib,
        loaded_kib,
        conns,
    })
}

/// Opens and closes `soak_round` connections at a time through `proxy` until `soak` has
/// passed, and prints its descriptors and RSS after each round: both must stay flat
/// (a leak of one descriptor or a few bytes per connection shows as a climb).
pub(crate) async fn soak(proxy: &Proxy, targets: &Targets, scale: Scale) -> anyhow::Result<()> {
    // Tens of thousands of connections a minute would exhaust the ephemeral ports with
    // TIME_WAIT sockets; this namespace is ours, so reuse them.
    std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
    let via = Via::Socks(proxy.name, proxy.addr);
    let round_scale = Scale {
        short_conns: scale.soak_round,
        short_concurrency: 64,
        short_cap: Duration::from_secs(60),
        ..scale
    };
    let start = Instant::now();
    let mut samples: Vec<(usize, u64)> = Vec::new();
    let (mut done, mut failed) = (0, 0);
    println!(
        "\nsoak: rounds of {} connections through {} for {:?}",
        scale.soak_round, proxy.name, scale.soak
    );
    println!(
        "{:>8} {:>10} {:>8} {:>10} {:>8}",
        "seconds", "conns", "failed", "RSS KiB", "fds"
    );
    while start.elapsed() < scale.soak {
        let round = short_conns(via, targets, round_scale).await?;
        done += round.latencies.len();
        failed += round.failed;
        tokio::time::sleep(SETTLE).await;
        let sample = (proxy.fd_count()?, proxy.rss_kib()?);
        println!(
            "{:>8.0} {done:>10} {failed:>8} {:>10} {:>8}",
            start.elapsed().as_secs_f64(),
            sample.1,
            sample.0
        );
        samples.push(sample);
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let max_fds = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "soak: {done} connections, {failed} failed; fds first {} last {} max {max_fds}; \
         RSS KiB first {} last {} max {max_rss}",
        first.0, last.0, first.1, last.1
    );
    ensure!(
        last.0 <= first.0 + 8,
        "descriptors climbed from {} to {} over the soak",
        first.0,
        last.0
    );
    Ok(())
}

/// What a chain's box says about its upstream in `GET /health`.
#[derive(Debug)]
pub(crate) struct UpstreamHealth {
    /// `up`, `down` (it failed last, so the box serves destinations directly) or `unknown`.
    pub(crate) state: String,
    /// Connections the upstream carried.
    pub(crate) connections: u64,
    /// Of those, how many resumed a TLS session (no full handshake).
    pub(crate) resumed_sessions: u64,
}

/// Asks the box's REST API (loopback, no token) over HTTP/1.1 with `Connection: close`.
pub(crate) async fn upstream_health(chain: &Chain) -> anyhow::Result<UpstreamHealth> {
    let ask = async {
        let mut conn = TcpStream::connect(chain.api).await?;
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            chain.api
        );
        conn.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await?;
        io::Result::Ok(response)
    };
    let name = chain.kind.route();
    let response = tokio::time::timeout(STEP_TIMEOUT, ask)
        .await
        .with_context(|| format!("{name}: GET /health timed out"))?
        .with_context(|| format!("{name}: GET /health"))?;
    let response = String::from_utf8_lossy(&response);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .with_context(|| format!("{name}: GET /health: no body in {response:?}"))?;
    let health: serde_json::Value = serde_json::from_str(body)
        .with_context(|| format!("{name}: GET /health: not JSON: {response:?}"))?;
    let upstream = &health["upstreams"][0];
    let count = |field: &str| {
        upstream[field]
            .as_u64()
            .with_context(|| format!("{name}: GET /health: no upstreams[0].{field} in {body}"))
    };
    Ok(UpstreamHealth {
        state: upstream["state"].as_str().unwrap_or_default().to_owned(),
        connections: count("connections")?,
        resumed_sessions: count("resumed_sessions")?,
    })
}

/// Relays one connection through the chain and checks that its upstream carried it.
pub(crate) async fn ensure_chained(chain: &Chain, targets: &Targets) -> anyhow::Result<()> {
    let mut conn = chain.via().connect(targets.echo).await?;
    conn.write_all(b"ping").await?;
    conn.read_exact(&mut [0u8; 4]).await?;
    drop(conn);
    let health = upstream_health(chain).await?;
    if health.state != "up" || health.connections != 1 {
        let log = std::fs::read_to_string(&chain.entry.log).unwrap_or_default();
        bail!(
            "{}: the box did not relay through its upstream ({health:?}); its log:\n{log}",
            chain.kind.route()
        );
    }
    Ok(())
}
