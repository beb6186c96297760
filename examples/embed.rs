//! Embedding the proxy: a SOCKS5 server on 127.0.0.1:1080 whose outbound connections use
//! MPTCP except to 10.0.0.0/8, with the policy changed while it runs.
//!
//! Run with `cargo run -p mptcp-socks-examples --example embed`, then for instance
//! `curl --socks5-hostname 127.0.0.1:1080 http://example.com/`. Stop with Ctrl-C.

use mptcp_socks::{Policy, PolicyHandle, Server, ServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let policy: Policy = "10.0.0.0/8,0,default,default,\n*,1,default,default,\n.\n".parse()?;
    let handle = PolicyHandle::new(policy);

    // Edits apply from the next connection on; connections in flight keep their socket.
    let mut edited = (*handle.load()).clone();
    edited.upsert("192.0.2.7,0,default,default,".parse()?);
    handle.store(edited);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:1080").await?;
    println!("SOCKS5 on {}; Ctrl-C stops", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let server = Server::new(ServerConfig::default(), handle)?;
    server.serve(listener, shutdown).await;
    // What the server counted: connections by transport (mptcp, fallback, tcp).
    println!("{:?}", server.stats().snapshot());
    Ok(())
}
