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

/// `pingpong_conns` connections, opened before the clock starts, each sending
/// [`PING_BYTES`] and waiting for their echo, again and again, for `pingpong_time`: round
/// trips per second, all connections together.
pub(crate) async fn ping_pong(via: Via, targets: &Targets, scale: Scale) -> anyhow::Result<f64> {
    let held = open_held(
        via,
        targets.echo,
        scale.pingpong_conns,
        scale.pingpong_conns,
    )
    .await;
    if let Some(e) = held.first_error {
        bail!("{}: ping-pong connection: {e}", via.name());
    }
    let start = Instant::now();
    let deadline = start + scale.pingpong_time;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in held.conns {
        let trips = async move {
            let ping = [0x5Au8; PING_BYTES];
            let mut pong = [0u8; PING_BYTES];
            let mut trips = 0u64;
            while Instant::now() < deadline {
                conn.write_all(&ping).await?;
                conn.read_exact(&mut pong).await?;
                trips += 1;
            }
            io::Result::Ok(trips)
        };
        tasks.spawn(tokio::time::timeout_at(
            (deadline + STEP_TIMEOUT).into(),
            trips,
        ));
    }
    let mut trips = 0;
    while let Some(done) = tasks.join_next().await {
        trips += done?
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "a round trip timed out"))
            .flatten()
            .with_context(|| format!("{}: ping-pong", via.name()))?;
    }
    Ok(trips as f64 / start.elapsed().as_secs_f64())
}

/// Sends `bytes` patterned bytes through `conn` (to the echo server) while reading them
/// back, and checks that they came back unchanged.
pub(crate) async fn echo_through(conn: &mut TcpStream, bytes: usize) -> io::Result<()> {
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; bytes];
    let (mut rx, mut tx) = conn.split();
    // Both ways at once: more than the sockets buffer would block a write-then-read.
    let (sent, got) = tokio::join!(tx.write_all(&payload), rx.read_exact(&mut back));
    sent?;
    got?;
    if back != payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo differs",
        ));
    }
    Ok(())
}

/// Relayed connections held open together, and those that failed to open.
pub(crate) struct Held {
    pub(crate) conns: Vec<TcpStream>,
    pub(crate) failed: usize,
    /// The first failure, to say what went wrong.
    pub(crate) first_error: Option<io::Error>,
}

/// Opens `count` connections to the echo server, `concurrency` at a time, each carrying
/// one small echo (so its relay is fully set up), and keeps them open.
pub(crate) async fn open_held(
    via: Via,
    target: SocketAddrV4,
    count: usize,
    concurrency: usize,
) -> Held {
    let held = Arc::new(Mutex::new(Held {
        conns: Vec::with_capacity(count),
        failed: 0,
        first_error: None,
    }));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let (held, next) = (held.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let open = async {
                    let mut conn = via.connect(target).await?;
                    echo_through(&mut conn, 4).await?;
                    io::Result::Ok(conn)
                };
                let opened = tokio::time::timeout(STEP_TIMEOUT, open)
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "open timed out"))
                    });
                let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                match opened {
                    Ok(conn) => held.conns.push(conn),
                    Err(e) => {
                        held.failed += 1;
                        held.first_error.get_or_insert(e);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
    Held {
        conns: std::mem::take(&mut held.conns),
        failed: held.failed,
        first_error: held.first_error.take(),
    }
}

/// What relayed connections cost a proxy: descriptors and RSS of a fresh proxy that has
/// served one connection, with `idle_conns` relayed connections open (each has carried
/// a small echo), with the same connections open after each has echoed `warm_bytes`, and
/// after they all closed.
#[derive(Debug)]
pub(crate) struct Memory {
    pub(crate) conns: usize,
    pub(crate) before: Sample,
    pub(crate) idle: Sample,
    pub(crate) warm: Sample,
    pub(crate) closed: Sample,
}

impl Memory {
    pub(crate) fn idle_per_conn_kib(&self) -> f64 {
        self.per_conn_kib(self.idle)
    }

    pub(crate) fn warm_per_conn_kib(&self) -> f64 {
        self.per_conn_kib(self.warm)
    }

    fn per_conn_kib(&self, open: Sample) -> f64 {
        open.kib_per_conn_over(self.before, self.conns)
    }

    pub(crate) fn fds_per_conn(&self) -> f64 {
        (self.idle.sockets as f64 - self.before.sockets as f64) / self.conns as f64
    }

    /// Of what the warm connections added to RSS, the share given back once they closed.
    pub(crate) fn returned_percent(&self) -> f64 {
        let grown = self.warm.rss_kib as f64 - self.before.rss_kib as f64;
        let kept = self.closed.rss_kib as f64 - self.before.rss_kib as f64;
        if grown <= 0.0 {
            return 100.0;
        }
        (100.0 * (1.0 - kept / grown)).clamp(0.0, 100.0)
    }
}

pub(crate) async fn measure_memory(
    via: Via,
    proxy: &Proxy,
    targets: &Targets,
    scale: Scale,
) -> anyhow::Result<Memory> {
    // One relayed connection first, so one-time setup does not count as per-connection.
    let mut warmup = via.connect(targets.echo).await?;
    echo_through(&mut warmup, 4).await?;
    drop(warmup);
    let before = proxy.settled(usize::MAX).await?;
    let held = open_held(via, targets.echo, scale.idle_conns, scale.short_concurrency).await;
    if let Some(e) = held.first_error {
        bail!(
            "{}: {} of {} idle connections failed to open: {e}",
            via.name(),
            held.failed,
            scale.idle_conns
        );
    }
    let mut conns = held.conns;
    let idle = proxy.settled(usize::MAX).await?;

    // Every connection moves data, `short_concurrency` at a time, and stays open.
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = conns.len().div_ceil(scale.short_concurrency).max(1);
    while !conns.is_empty() {
        let mut chunk: Vec<TcpStream> = conns.drain(..per_task.min(conns.len())).collect();
        tasks.spawn(async move {
            for conn in &mut chunk {
                echo_through(conn, scale.warm_bytes).await?;
            }
            io::Result::Ok(chunk)
        });
    }
    while let Some(done) = tasks.join_next().await {
        conns.extend(done?.with_context(|| format!("{}: warm echo", via.name()))?);
    }
    let warm = proxy.settled(usize::MAX).await?;
    drop(conns);
    // mptcp-socksd hands freed memory back a moment after its connections went away.
    tokio::time::sleep(RETURN_WAIT).await;
    let closed = proxy.settled(before.fds).await?;
    Ok(Memory {
        conns: scale.idle_conns,
        before,
        idle,
        warm,
        closed,
    })
}

/// Many relayed connections open at once through one proxy.
#[derive(Debug)]
pub(crate) struct Concurrent {
    /// What the scale asks for.
    pub(crate) wanted: usize,
    /// What was opened: `wanted`, or less when it cannot fit the proxy's connection cap
    /// or the descriptors of this process (`limited_by` says which).
    pub(crate) tried: usize,
    pub(crate) limited_by: Option<String>,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<io::Error>,
    /// From the first connect to the last echo.
    pub(crate) open_time: Duration,
    pub(crate) before: Sample,
    pub(crate) open: Sample,
    pub(crate) closed: Sample,
}

impl Concurrent {
    pub(crate) fn opened(&self) -> usize {
        self.tried - self.failed
    }

    pub(crate) fn per_conn_kib(&self) -> f64 {
        self.open
            .kib_per_conn_over(self.before, self.opened().max(1))
    }
}

/// Opens `concurrent_conns` relayed connections through the daemon `proxy`, each carrying
/// a small echo, and holds them all open at once; then closes them. Failures are counted,
/// not fatal: the caller decides.
pub(crate) async fn concurrent(
    proxy: &Proxy,
    targets: &Targets,
    scale: Scale,
) -> anyhow::Result<Concurrent> {
    let wanted = scale.concurrent_conns;
    let cap = proxy.logged_connection_cap()?;
    // Both ends of each connection are ours: the client's and the echo server's.
    let (own_limit, _) = mptcp_policy::fd_limit()?;
    let own_open = std::fs::read_dir("/proc/self/fd")?.count();
    let own_room = usize::try_from(own_limit.saturating_sub(own_open as u64 + 64) / 2)?;
    let (tried, limited_by) = if wanted <= cap.min(own_room) {
        (wanted, None)
    } else if cap <= own_room {
        let limit = proxy.fd_limit()?;
        (
            cap,
            Some(format!(
                "{}'s connection cap is {cap}, sized from its fd limit {limit} (the hard \
                 limit it inherits; raising that needs CAP_SYS_RESOURCE)",
                proxy.name
            )),
        )
    } else {
        (
            own_room,
            Some(format!(
                "this process's fd limit {own_limit} holds both ends of {own_room} \
                 connections"
            )),
        )
    };
    let before = proxy.settled(usize::MAX).await?;
    let start = Instant::now();
    let held = open_held(
        Via::Socks(proxy.name, proxy.addr),
        targets.echo,
        tried,
        CONCURRENT_OPENERS,
    )
    .await;
    let open_time = start.elapsed();
    let open = proxy.settled(usize::MAX).await?;
    drop(held.conns);
    let closed = proxy.settled(before.fds).await?;
    Ok(Concurrent {
        wanted,
        tried,
        limited_by,
        failed: held.failed,
        first_error: held.first_error,
        open_time,
        before,
        open,
        closed,
    })
}

/// Opens and closes `soak_round` connections at a time through `proxy` until `soak` has
/// passed, and prints its descriptors and RSS after each round: both must stay flat
/// (a leak of one descriptor or a few bytes per connection shows as a climb).
pub(crate) async fn soak(proxy: &Proxy, targets: &Targets, scale: Scale) -> anyhow::Result<()> {
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
