//! The public listener, in front of tiny_http: HTTPS on a current rustls, or plain HTTP.
//!
//! tiny_http's own TLS feature pins rustls 0.20 (RUSTSEC-2024-0336) and ring
//! 0.16, and tiny_http trusts its clients: it sets no timeouts, frames bodies
//! loosely, queues pipelined requests without bound and drains unread bodies
//! on the thread that drops a request. So tiny_http serves plain HTTP on a
//! private Unix socket, and this module owns the public port: it terminates
//! TLS (1.2 and 1.3 only), reads and checks every request head itself (`head`),
//! forwards one complete request at a time per connection and relays the
//! answer (`conn`), and bounds connections per client and in all, closing the
//! longest-idle one when room is needed (`conns`). `tls` loads the certificate
//! and watches its expiry.

mod conn;
mod conns;
pub mod head;
mod tls;

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

use crate::error::{Code, ProxyError};
use conn::Conn;
use conns::{Caps, Seat, Table};
pub use head::RELAY_HEADER;
pub use tls::{not_after, Tls};

/// A client gets this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that takes no byte of its answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Stack of a connection thread: it holds a few small buffers and rustls.
const STACK: usize = 256 * 1024;

/// Caps and timeouts for client connections.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// Open connections in all.
    pub max: usize,
    /// Open connections from one client address.
    pub per_client: usize,
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
    /// How long a request head may take to arrive, from its first byte.
    pub header: Duration,
    /// How long a request body may take to arrive, after its head.
    pub body: Duration,
}

/// What a refused request was, for its access-log line and CORS headers.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method, or `-` when the head could not be read.
    pub method: String,
    /// The target, or `-`.
    pub target: String,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// When its first byte came.
    pub started: Instant,
}

impl Seen {
    fn of(rq: &head::RequestHead, started: Instant) -> Seen {
        Seen {
            method: rq.method.clone(),
            target: rq.target.clone(),
            origin: rq.header("Origin").map(str::to_string),
            started,
        }
    }

    fn unparsed(started: Instant) -> Seen {
        Seen {
            method: "-".into(),
            target: "-".into(),
            origin: None,
            started,
        }
    }
}

/// Builds the answer to a request the front refuses, and logs and counts it.
pub type Refuse = Box<dyn Fn(&ProxyError, &Seen) -> Vec<u8> + Send + Sync>;

/// What the front and the server share: connection counts for the metrics,
/// and the exchanges whose relayed answer broke off.
#[derive(Default)]
pub struct Shared {
    open: AtomicUsize,
    /// Connections closed to make room for new ones.
    pub evicted: AtomicU64,
    /// Connections refused because every one of that client's (or all) was busy.
    pub refused: AtomicU64,
    next_relay: AtomicU64,
    broken: Mutex<HashSet<u64>>,
    draining: AtomicBool,
    stopped: AtomicBool,
    /// Exchanges between being handed to the server and their answer's end.
    relays: AtomicUsize,
}

impl Shared {
    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// After SIGTERM: every answer closes its connection, so clients and load
    /// balancers open their next one elsewhere (tiny_http drops the server's own
    /// `Connection: close`).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The server is about to go: no request is handed to it any more (each
    /// gets 503 `shutting_down`); those already handed over still get answered.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Exchanges handed to the server whose answer has not ended yet.
    pub fn relays(&self) -> usize {
        self.relays.load(Ordering::SeqCst)
    }

    fn set_open(&self, n: usize) {
        self.open.store(n, Ordering::Relaxed);
    }

    fn broken_set(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.broken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server's side: the answer of exchange `relay` (its `RELAY_HEADER`)
    /// broke off, so the client must see it cut, not complete.
    pub fn break_off(&self, relay: u64) {
        self.broken_set().insert(relay);
    }

    fn broken(&self, relay: u64) -> bool {
        self.broken_set().contains(&relay)
    }

    /// A new exchange, or `None` once the server is stopping. Counted before
    /// `stopped` is read, so that the server, which sets `stopped` before it
    /// reads the count, never misses one that got through.
    fn open_relay(&self) -> Option<Relay<'_>> {
        self.relays.fetch_add(1, Ordering::SeqCst);
        let relay = Relay {
            shared: self,
            id: self.next_relay.fetch_add(1, Ordering::Relaxed),
        };
        (!self.stopped.load(Ordering::SeqCst)).then_some(relay)
    }
}

/// One exchange's id; its broken-off mark goes with it.
struct Relay<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        self.shared.broken_set().remove(&self.id);
        self.shared.relays.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything the front needs.
pub struct Door {
    /// tiny_http's private socket.
    pub backend: PathBuf,
    /// The certificate, or plain HTTP.
    pub tls: Option<Arc<Tls>>,
    /// Caps and timeouts.
    pub connections: Connections,
    /// Answers a refused request.
    pub refuse: Refuse,
    /// Shared with the server.
    pub shared: Arc<Shared>,
}

/// The private backend socket, in `run_dir` (a 0700 directory of the state
/// directory, so no other local user can reach tiny_http around the front).
pub fn backend_socket(run_dir: &Path) -> PathBuf {
    let sock = run_dir.join(format!("backend-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    sock
}

/// Accepts connections on `listener` and serves each on a thread of its own; runs forever.
pub fn serve(listener: TcpListener, door: Door) {
    let door = Arc::new(door);
    let caps = Caps {
        total: door.connections.max,
        per_client: door.connections.per_client,
    };
    let table = Table::new(caps, door.shared.clone());
    for stream in listener.incoming() {
        let tcp = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Out of file descriptors, most likely: do not spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = tcp
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let seat = match table.admit(tcp, peer) {
            Ok(seat) => seat,
            Err(tcp) => {
                refuse_at_the_door(&door, &tcp, peer);
                continue;
            }
        };
        let door = door.clone();
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(STACK)
            .spawn(move || connection(&seat, &door));
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Every connection this client (or anyone) has open is busy with the server.
fn refuse_at_the_door(door: &Door, tcp: &TcpStream, peer: IpAddr) {
    door.shared.refused.fetch_add(1, Ordering::Relaxed);
    log::warn!("refusing a connection from {peer}: every connection it may open is busy");
    if door.tls.is_none() {
        let e = ProxyError::new(
            Code::Overloaded,
            "too many connections from this address are busy; retry shortly",
        )
        .with_header("Retry-After", "5");
        let answer = (door.refuse)(&e, &Seen::unparsed(Instant::now()));
        // A fresh socket's send buffer takes this at once; never wait on it here.
        let _ = tcp.set_nonblocking(true);
        let _ = (&*tcp).write(&answer);
        let _ = tcp.shutdown(Shutdown::Write);
    }
}

fn connection(seat: &Seat, door: &Door) {
    let tcp = seat.slot.tcp();
    let set_up = tcp
        .set_nodelay(true)
        .and_then(|()| tcp.set_write_timeout(Some(WRITE_TIMEOUT)));
    if let Err(e) = set_up {
        return log::debug!("connection setup failed: {e}");
    }
    match &door.tls {
        None => Conn::new(tcp, &seat.slot, door).serve(),
        Some(tls) => match handshake(tcp, tls) {
            Ok(stream) => Conn::new(stream, &seat.slot, door).serve(),
            Err(e) => log::debug!("TLS handshake failed: {e}"),
        },
    }
}

/// Completes the TLS handshake within its timeout.
fn handshake<'a>(
    mut tcp: &'a TcpStream,
    tls: &Tls,
) -> std::io::Result<StreamOwned<ServerConnection, &'a TcpStream>> {
    let mut conn = ServerConnection::new(tls.config()).map_err(std::io::Error::other)?;
    let until = Instant::now() + HANDSHAKE_TIMEOUT;
    while conn.is_handshaking() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        tcp.set_read_timeout(Some(left))?;
        conn.complete_io(&mut tcp)?;
    }
    Ok(StreamOwned::new(conn, tcp))
}
