//! Outgoing HTTP: one ureq agent per kind of upstream, each with its own
//! timeouts, and the connections to model APIs, which the model client writes
//! itself ([`crate::model::http`]): made with the connect timeout, TLS through
//! [`trust`], and kept alive between requests in a [`Pool`].

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use ureq::Agent;

use crate::model::http::Client;
use crate::{trust, tunnel};

/// How long each kind of upstream may take.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP/TLS connect, every upstream.
    pub connect: Duration,
    /// Longest silence from a PACS (waiting for headers or between reads).
    pub pacs: Duration,
    /// Longest silence from a model (it may think this long before answering).
    pub model: Duration,
    /// Longest whole exchange with a PACS.
    pub pacs_total: Duration,
    /// Longest whole exchange with a model (upload, thinking, answer).
    pub model_total: Duration,
    /// Longest exchange with the auth service.
    pub auth: Duration,
}

impl Default for Timeouts {
    /// The documented defaults.
    fn default() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            connect: s(10),
            pacs: s(60),
            model: s(600),
            pacs_total: s(1800),
            model_total: s(3600),
            auth: s(30),
        }
    }
}

/// Idle keep-alive connections kept per host: at least one per default worker,
/// so a burst of concurrent requests finds its connections again instead of
/// reconnecting (a model with a short listen backlog drops the SYNs of a
/// reconnect storm, and the kernel retries them only after a second).
const IDLE_PER_HOST: usize = 32;

/// Idle connections kept in all, per agent or pool.
const IDLE_TOTAL: usize = 128;

/// How long an idle PACS connection is kept: Orthanc closes them after 1 s, and
/// one reused just as the server closes it fails the request.
const IDLE_AGE: Duration = Duration::from_millis(500);

/// The same for models: half the shortest keep-alive timeout model servers
/// commonly use (gunicorn 2 s; uvicorn and Node 5 s). A pooled connection is
/// also checked for a close from the server before each reuse.
const MODEL_IDLE_AGE: Duration = Duration::from_secs(1);

/// The agents for PACS, models and health probes.
#[derive(Clone)]
pub struct Agents {
    /// WADO-RS retrievals.
    pub pacs: Agent,
    /// Model posts.
    pub model: Client,
    /// Health probes: short timeouts throughout.
    pub probe: Agent,
    /// The auth service.
    pub auth: Agent,
}

impl Agents {
    /// Builds the agents; fails only on an unreadable CA file.
    pub fn new(t: &Timeouts, ca_file: Option<&std::path::Path>) -> Result<Agents, String> {
        let tls = trust::client_config(ca_file)?;
        let pacs = base(t.connect)
            .timeout_recv_response(Some(t.pacs))
            .timeout_per_read(Some(t.pacs))
            .timeout_global(Some(t.pacs_total))
            .build();
        let short = Duration::from_secs(5);
        let probe = base(t.connect.min(short))
            .timeout_global(Some(short))
            .build();
        let auth = base(t.connect).timeout_global(Some(t.auth)).build();
        let agent = |c| trust::agent(c, tls.clone());
        let dialer = Dialer {
            tls: tls.clone(),
            connect: t.connect,
            proxy: tunnel::from_env(),
            pool: Arc::new(Pool::new(IDLE_PER_HOST, IDLE_TOTAL, MODEL_IDLE_AGE)),
        };
        Ok(Agents {
            pacs: agent(pacs),
            // The model reads its body as we write it, then thinks, for minutes
            // by default: silence in either direction may last this long.
            model: Client::new(dialer, t.model, t.model_total),
            probe: agent(probe),
            auth: agent(auth),
        })
    }
}

fn base(connect: Duration) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    Agent::config_builder()
        // Upstream error statuses are answers to classify, not transport errors.
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .max_redirects(0)
        // Orthanc drops idle keep-alive connections after 1 s; reusing one fails the request.
        .max_idle_age(IDLE_AGE)
        .max_idle_connections_per_host(IDLE_PER_HOST)
        .max_idle_connections(IDLE_TOTAL)
        .user_agent(USER_AGENT)
}

/// The `User-Agent` of every upstream request.
pub const USER_AGENT: &str = concat!("model-proxy/", env!("CARGO_PKG_VERSION"));

/// Where a connection goes: what a pooled connection is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// HTTPS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A connection to an upstream, plain or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (rustls) over TCP.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    /// The TCP socket under it, for timeouts.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Whether an idle connection is still open and has nothing unread: the
    /// server has not closed it (EOF) nor said anything (a stray byte, a TLS
    /// alert). Peeked without blocking.
    fn reusable(&self) -> bool {
        let s = self.socket();
        if s.set_nonblocking(true).is_err() {
            return false;
        }
        let idle = matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).is_ok() && idle
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    /// Plain: one `writev`. TLS: rustls seals each slice into records anyway.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write_vectored(bufs),
            Conn::Tls(s) => {
                let mut n = 0;
                for b in bufs {
                    s.write_all(b)?;
                    n += b.len();
                }
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Idle keep-alive connections by origin, newest last; bounded in number and age.
pub struct Pool {
    idle: Mutex<HashMap<Origin, Vec<(Conn, Instant)>>>,
    per_host: usize,
    total: usize,
    age: Duration,
}

impl Pool {
    /// An empty pool keeping at most `per_host` (and `total`) connections, each at most `age` idle.
    pub fn new(per_host: usize, total: usize, age: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            per_host,
            total,
            age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Origin, Vec<(Conn, Instant)>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection to `origin` that is still good.
    pub fn take(&self, origin: &Origin) -> Option<Conn> {
        loop {
            let (conn, since) = self.lock().get_mut(origin)?.pop()?;
            // Checked outside the lock: a stale one is dropped (closed) and the next tried.
            if since.elapsed() < self.age && conn.reusable() {
                return Some(conn);
            }
        }
    }

    /// Keeps `conn` for reuse, unless the pool is full.
    pub fn put(&self, origin: &Origin, conn: Conn) {
        let mut idle = self.lock();
        idle.retain(|_, v| {
            v.retain(|(_, since)| since.elapsed() < self.age);
            !v.is_empty()
        });
        let total: usize = idle.values().map(Vec::len).sum();
        let here = idle.entry(origin.clone()).or_default();
        if here.len() < self.per_host && total < self.total {
            here.push((conn, Instant::now()));
        }
    }

    /// Idle connections kept to `origin`.
    #[cfg(test)]
    pub fn idle(&self, origin: &Origin) -> usize {
        self.lock().get(origin).map_or(0, Vec::len)
    }
}

/// Makes connections to upstreams, or takes them from its pool.
#[derive(Clone)]
pub struct Dialer {
    tls: Arc<ClientConfig>,
    connect: Duration,
    /// The environment's forward proxy, as ureq's agents use it.
    proxy: Option<ureq::Proxy>,
    /// Where finished connections go back.
    pub pool: Arc<Pool>,
}

impl Dialer {
    /// A dialer with its own pool.
    #[cfg(test)]
    pub fn new(tls: Arc<ClientConfig>, connect: Duration, pool: Pool) -> Dialer {
        Dialer {
            tls,
            connect,
            proxy: None,
            pool: Arc::new(pool),
        }
    }

    /// A connection to `origin`, pooled or new (TCP connect and TLS handshake
    /// within the connect timeout each), with Nagle off: our writes are either
    /// big or the last of a request, which must not wait for an ACK.
    pub fn get(&self, origin: &Origin) -> io::Result<Conn> {
        if let Some(c) = self.pool.take(origin) {
            return Ok(c);
        }
        let tcp = match self.proxy.as_ref().filter(|p| tunnel::applies(p, origin)) {
            Some(p) => tunnel::open(p, self.tcp(p.host(), p.port())?, origin, self.connect)?,
            None => self.tcp(&origin.host, origin.port)?,
        };
        tcp.set_nodelay(true)?;
        if !origin.tls {
            return Ok(Conn::Plain(tcp));
        }
        let name = ServerName::try_from(origin.host.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid host name"))?;
        let conn = ClientConnection::new(self.tls.clone(), name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        tls.sock.set_read_timeout(Some(self.connect))?;
        tls.sock.set_write_timeout(Some(self.connect))?;
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Conn::Tls(Box::new(tls)))
    }

    fn tcp(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.connect) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the host name has no address")
        }))
    }
}
