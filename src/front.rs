//! The public listener, in front of tiny_http: HTTPS on a current rustls, or plain HTTP.
//!
//! tiny_http's own TLS feature pins rustls 0.20 (RUSTSEC-2024-0336) and ring 0.16,
//! and tiny_http sets no socket timeouts. So tiny_http serves plain HTTP on a
//! private Unix socket, and this module owns the public port: it terminates TLS
//! (1.2 and 1.3 only) or passes plain bytes, one thread per direction per
//! connection, bounds the number of connections and drops clients that stall a
//! handshake or stop reading their response.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::access::Stamp;

/// Connections served at once; beyond this, new ones are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// A client gets this long to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that stops reading its response is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Loads the certificate chain and key into a server configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let hint = "make a pair with scripts/make-cert.sh, or serve plain HTTP with --no-tls";
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "cannot read the TLS certificate {}: {e}; {hint}",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; {hint}",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}; {hint}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not fit together: {e}"))?;
    Ok(Arc::new(config))
}

/// The private backend socket, in `run_dir` (a 0700 directory of the state
/// directory, so no other local user can reach tiny_http around the front).
pub fn backend_socket(run_dir: &Path) -> PathBuf {
    let sock = run_dir.join(format!("backend-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    sock
}

/// Accepts connections on `listener` (TLS when `tls` is given) and relays each to
/// the backend socket; runs forever.
pub fn serve(listener: TcpListener, tls: Option<Arc<ServerConfig>>, backend: PathBuf) {
    let open = Arc::new(AtomicUsize::new(0));
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
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            log::warn!("{MAX_CONNECTIONS} connections open; refusing another");
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (tls, backend, open) = (tls.clone(), backend.clone(), open.clone());
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            let ended = match tls {
                Some(config) => connection(tcp, config, &backend),
                None => plain(tcp, &backend),
            };
            if let Err(e) = ended {
                log::debug!("connection ended: {e}");
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Plain HTTP: bytes both ways, with the same write timeout as TLS.
fn plain(tcp: TcpStream, backend: &Path) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let unix = UnixStream::connect(backend)?;
    let down = {
        let (mut tcp, mut unix) = (tcp.try_clone()?, unix.try_clone()?);
        thread::Builder::new()
            .name("conn-out".into())
            .spawn(move || {
                let copied = io::copy(&mut unix, &mut tcp);
                let _ = tcp.shutdown(Shutdown::Both);
                copied
            })?
    };
    // Each request head gets the client's address (see access::stamp).
    let up = io::copy(&mut &tcp, &mut Stamp::new(&unix, tcp.peer_addr()));
    let _ = unix.shutdown(Shutdown::Write);
    let _ = down.join();
    let _ = tcp.shutdown(Shutdown::Both);
    up.map(|_| ())
}

/// TLS: handshake, then decrypt one way and encrypt the other.
fn connection(mut tcp: TcpStream, config: Arc<ServerConfig>, backend: &Path) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    // A request may take minutes to answer: no read timeout once the client is in.
    tcp.set_read_timeout(None)?;
    let unix = UnixStream::connect(backend)?;
    let conn = Arc::new(Mutex::new(conn));
    let down = {
        let (conn, tcp, unix) = (conn.clone(), tcp.try_clone()?, unix.try_clone()?);
        thread::Builder::new()
            .name("tls-out".into())
            .spawn(move || backend_to_client(&conn, tcp, unix))?
    };
    let up = client_to_backend(&conn, &tcp, &unix);
    // Whatever ended first, end the other direction too.
    let _ = unix.shutdown(Shutdown::Both);
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = down.join();
    up
}

fn lock(conn: &Mutex<ServerConnection>) -> std::sync::MutexGuard<'_, ServerConnection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrypts what the client sends and writes it to the backend.
fn client_to_backend(
    conn: &Mutex<ServerConnection>,
    mut tcp: &TcpStream,
    unix: &UnixStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut plain = Vec::with_capacity(16 * 1024);
    // The handshake may already have buffered the first request (a client's
    // Finished and its data often share a segment): forward that before reading.
    let mut input: &[u8] = &[];
    // Each request head gets the client's address (see access::stamp).
    let mut to_backend = Stamp::new(unix, tcp.peer_addr());
    loop {
        let closed = drain(&mut lock(conn), &mut input, &mut plain, &mut tcp)?;
        to_backend.write_all(&plain)?;
        plain.clear();
        if closed {
            let _ = unix.shutdown(Shutdown::Write);
            return Ok(());
        }
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            let _ = unix.shutdown(Shutdown::Write);
            return Ok(());
        }
        input = &buf[..n];
    }
}

/// Feeds `input` to the connection, collects the plaintext and flushes any TLS
/// records it owes the client; `true` once the client has closed.
fn drain(
    c: &mut ServerConnection,
    input: &mut &[u8],
    plain: &mut Vec<u8>,
    tcp: &mut &TcpStream,
) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let mut closed = false;
    loop {
        if !input.is_empty() {
            c.read_tls(input)?;
        }
        if let Err(e) = c.process_new_packets() {
            // Tell the client why (an alert), then give up on it.
            let _ = c.write_tls(tcp);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        loop {
            match c.reader().read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while c.wants_write() {
            c.write_tls(tcp)?;
        }
        if input.is_empty() {
            return Ok(closed);
        }
    }
}

/// Encrypts what the backend answers and sends it to the client.
fn backend_to_client(
    conn: &Mutex<ServerConnection>,
    mut tcp: TcpStream,
    mut unix: UnixStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unix.read(&mut buf)?;
        let mut c = lock(conn);
        if n == 0 {
            c.send_close_notify();
        } else {
            c.writer().write_all(&buf[..n])?;
        }
        while c.wants_write() {
            c.write_tls(&mut tcp)?;
        }
        if n == 0 {
            drop(c);
            let _ = tcp.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}
