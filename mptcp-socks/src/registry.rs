//! The live outbound connections, for operators (`GET /connections`) and for the
//! userspace path manager, which must tie a kernel token to the rule of its connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use mptcp_policy::{Destination, Settings, SubflowInfo, Transport, UpstreamName};
use tokio::net::TcpStream;

/// A relayed connection as the proxy opened it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Connection {
    /// Unique for the life of the process.
    pub id: u64,
    /// The SOCKS client.
    pub client: SocketAddr,
    /// The target as the client asked for it: `name:port` or `address:port`.
    pub target: String,
    /// The address the proxy connected to: the destination, or the upstream.
    pub remote: SocketAddr,
    /// The proxy's end of the outbound connection (of its first subflow).
    pub local: SocketAddr,
    /// The rule that matched, `None` for the built-in default.
    pub rule: Option<Destination>,
    /// The settings the connection was opened with.
    pub settings: Settings,
    /// MPTCP, fallback or plain TCP, as of the connect.
    pub transport: Transport,
    /// The MPTCP connection token, which the path-manager netlink events carry.
    pub token: Option<u32>,
    /// The upstream the connection goes through; `None` when direct.
    pub via: Option<UpstreamName>,
    /// Why it went direct although its rule names an upstream (not configured, failed).
    pub why_direct: Option<String>,
    /// When the outbound connection was established.
    pub since: SystemTime,
    /// The subflows now, read from the socket by [`Connections::list`]; empty unless MPTCP
    /// (and in what [`Connections::by_token`] returns).
    pub subflows: Vec<SubflowInfo>,
}

/// A clonable handle to the registry of live connections.
#[derive(Debug, Clone, Default)]
pub struct Connections(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    connection: Connection,
    /// The outbound socket, shared with the relay (no duplicate descriptor), so its
    /// subflows can be read while it relays.
    socket: Arc<TcpStream>,
}

impl Connections {
    /// The live connections with their current subflows, oldest first.
    pub fn list(&self) -> Vec<Connection> {
        let entries: Vec<(Connection, Arc<TcpStream>)> = self
            .live()
            .values()
            .map(|e| (e.connection.clone(), Arc::clone(&e.socket)))
            .collect();
        // Socket reads happen outside the lock; the Arc keeps each socket open meanwhile.
        let mut list: Vec<Connection> = entries
            .into_iter()
            .map(|(mut connection, socket)| {
                if connection.transport == Transport::Mptcp {
                    connection.subflows = mptcp_policy::subflows(&socket.as_fd())
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                }
                connection
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// The live connection with this MPTCP token (without subflows).
    pub fn by_token(&self, token: u32) -> Option<Connection> {
        self.live()
            .values()
            .find(|e| e.connection.token == Some(token))
            .map(|e| e.connection.clone())
    }

    /// The MPTCP tokens of the live connections.
    pub fn tokens(&self) -> std::collections::HashSet<u32> {
        self.live()
            .values()
            .filter_map(|e| e.connection.token)
            .collect()
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.0.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection until the returned guard drops. Fills in `id`.
    pub(crate) fn register(
        &self,
        mut connection: Connection,
        socket: Arc<TcpStream>,
    ) -> Registration {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        connection.id = id;
        self.live().insert(
            id,
            Entry {
                connection,
                socket: Arc::clone(&socket),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            socket,
        }
    }
}

/// Removes its connection from the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Connections,
    id: u64,
    socket: Arc<TcpStream>,
}

impl Registration {
    /// The connection's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The registered outbound socket.
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.socket
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.live().remove(&self.id);
    }
}
