//! Helpers shared by the integration tests of this package that run the daemon; the
//! rest (namespaces, topologies, the SOCKS client) is in `mptcp-test-support`.
#![allow(dead_code)]

pub(crate) mod daemon;

/// Sends `bytes` patterned bytes through `stream` (a relay to an echo server) and reads
/// them back; panics if any differs.
pub(crate) fn echo_bytes(stream: &mut std::net::TcpStream, bytes: usize) {
    use std::io::{Read, Write};
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().expect("clone");
    let sent = data.clone();
    let sender = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; bytes];
    stream.read_exact(&mut back).expect("echoed");
    sender.join().expect("sender").expect("sent");
    assert!(back == data, "the echo differs");
}
