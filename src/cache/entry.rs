//! One entry on disk: a fixed 1 KiB JSON header (padded with spaces), then the
//! body exactly as the model sent it.
//!
//! An entry is written to a temporary file while the answer streams to the
//! client ([`Tee`]), and renamed into place only when the model's body ended
//! normally, its length matched, and it was fsynced ([`Fill::finish`]); so a
//! crash or a concurrent writer (another replica on the same volume) never
//! leaves a torn entry under an entry's name. A reader checks the header and the
//! file's size before serving ([`open`]), and the body's SHA-256 while serving
//! ([`Hit`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::key::Key;
use super::Stats;
use crate::error::{self, ProxyError, Upstream};

/// Bytes before the body.
pub const HEADER_LEN: usize = 1024;

const MAGIC: &str = "model-proxy cache entry 1";

/// What the header records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    magic: String,
    key: String,
    /// The model's HTTP status.
    pub status: u16,
    /// The model's content type.
    pub content_type: Option<String>,
    /// Body bytes after the header.
    pub length: u64,
    sha256: String,
    /// For people looking at the directory: whose answer this is.
    model: String,
    server: String,
}

impl Header {
    /// The header of an answer about to be stored (length and digest come at the end).
    pub fn new(
        key: &Key,
        status: u16,
        content_type: Option<String>,
        model: &str,
        server: &str,
    ) -> Header {
        Header {
            magic: MAGIC.into(),
            key: key.hex(),
            status,
            content_type,
            length: 0,
            sha256: String::new(),
            model: model.into(),
            server: server.into(),
        }
    }

    /// The header block: JSON, spaces, a newline; `None` if it does not fit.
    fn encode(&self) -> Option<Vec<u8>> {
        let mut b = serde_json::to_vec(self).ok()?;
        if b.len() >= HEADER_LEN {
            return None;
        }
        b.resize(HEADER_LEN - 1, b' ');
        b.push(b'\n');
        Some(b)
    }

    fn decode(block: &[u8]) -> Option<Header> {
        let h: Header = serde_json::from_slice(block).ok()?;
        (h.magic == MAGIC).then_some(h)
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What looking up an entry found.
pub enum Opened {
    /// No entry.
    Missing,
    /// A valid, fresh entry, ready to stream.
    Hit(Box<Hit>),
    /// Older than the TTL (the caller removes it).
    Expired(fs::Metadata),
    /// Not a whole entry for this key (the caller removes it).
    Corrupt(fs::Metadata, String),
}

/// Opens the entry at `path` for `key`, checking its header, size and age.
pub fn open(path: &Path, key: &Key, ttl: Duration, stats: &Arc<Stats>) -> io::Result<Opened> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let written = meta.modified()?;
    let age = SystemTime::now()
        .duration_since(written)
        .unwrap_or_default();
    if age >= ttl {
        return Ok(Opened::Expired(meta));
    }
    let mut block = vec![0u8; HEADER_LEN];
    if file.read_exact(&mut block).is_err() {
        return Ok(Opened::Corrupt(meta, "shorter than its header".into()));
    }
    let Some(header) = Header::decode(&block) else {
        return Ok(Opened::Corrupt(meta, "unreadable header".into()));
    };
    if header.key != key.hex() {
        return Ok(Opened::Corrupt(meta, "header names another key".into()));
    }
    let whole = HEADER_LEN as u64 + header.length;
    if meta.len() != whole {
        let why = format!("{} bytes where the header says {whole}", meta.len());
        return Ok(Opened::Corrupt(meta, why));
    }
    // The last use, for the LRU (atime: mtime stays the time it was written).
    let used = meta.accessed().unwrap_or(written);
    if SystemTime::now().duration_since(used).unwrap_or_default() > Duration::from_secs(60) {
        let _ = file.set_times(fs::FileTimes::new().set_accessed(SystemTime::now()));
    }
    Ok(Opened::Hit(Box::new(Hit {
        left: header.length,
        header,
        age,
        file,
        path: path.to_path_buf(),
        meta,
        digest: Some(ring::digest::Context::new(&ring::digest::SHA256)),
        stats: stats.clone(),
    })))
}

/// Removes `path` if it is still the file `meta` describes (another replica may
/// have put a fresh entry there meanwhile).
pub fn remove_same(path: &Path, meta: &fs::Metadata) -> bool {
    match fs::metadata(path) {
        Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {
            fs::remove_file(path).is_ok()
        }
        _ => false,
    }
}

/// A stored answer being read; its body is checked against the header's
/// SHA-256 as it goes, and a mismatch fails the last read: the client sees a
/// cut answer (short of its Content-Length), never a wrong whole one.
pub struct Hit {
    /// The stored header.
    pub header: Header,
    /// Since the entry was written.
    pub age: Duration,
    file: File,
    path: PathBuf,
    meta: fs::Metadata,
    left: u64,
    digest: Option<ring::digest::Context>,
    stats: Arc<Stats>,
}

impl Hit {
    fn corrupt(&mut self, why: &str) -> io::Error {
        log::warn!(
            "cache entry {} is corrupt ({why}); removed",
            self.path.display()
        );
        if remove_same(&self.path, &self.meta) {
            self.stats.removed(&self.stats.corrupt, self.meta.len());
        }
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cache entry corrupt: {why}"),
        )
    }
}

impl Read for Hit {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.corrupt("cut short while being read"));
        }
        self.left -= n as u64;
        if let Some(d) = self.digest.as_mut() {
            d.update(&buf[..n]);
        }
        if self.left == 0 {
            let got = self.digest.take().map(|d| hex(d.finish().as_ref()));
            if got.as_deref() != Some(self.header.sha256.as_str()) {
                return Err(self.corrupt("body does not match its SHA-256"));
            }
        }
        Ok(n)
    }
}

/// How a fill ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    /// The entry is in place, this many bytes on disk.
    Landed(u64),
    /// The answer was whole but is not stored (too big, or the disk failed).
    NotStored,
    /// The model broke off mid-body.
    Failed(ProxyError),
}

/// Where a fill writes, and what it may write.
pub struct Target {
    /// The temporary file's path.
    pub tmp: PathBuf,
    /// The entry's path.
    pub path: PathBuf,
    /// Largest body stored.
    pub cap: u64,
}

/// The model's body on its way to the client and into a temporary file.
struct Filling {
    body: Box<dyn Read + Send>,
    file: Option<File>,
    target: Target,
    header: Header,
    expected: Option<u64>,
    written: u64,
    digest: Option<ring::digest::Context>,
    eof: bool,
    broke: Option<ProxyError>,
    /// The entry's size once it landed.
    landed: Option<u64>,
}

impl Filling {
    fn pull(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        // The entry lands before the client gets the answer's last bytes, so a
        // client that has its answer and asks again (or purges) finds the entry.
        match self.body.read(buf) {
            Ok(0) => {
                self.eof = true;
                self.settle();
                Ok(0)
            }
            Ok(n) => {
                self.keep(&buf[..n]);
                if self.expected == Some(self.written) {
                    self.settle();
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.broke = Some(error::from_io(Upstream::Model, &e));
                self.discard();
                Err(e)
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let Some(f) = self.file.as_mut() else { return };
        self.written += bytes.len() as u64;
        if self.written > self.target.cap {
            log::info!(
                "an answer over {} bytes is not cached (--cache-size / 4)",
                self.target.cap
            );
            return self.discard();
        }
        if let Err(e) = f.write_all(bytes) {
            log::warn!(
                "cannot write the cache file {}: {e}",
                self.target.tmp.display()
            );
            return self.discard();
        }
        if let Some(d) = self.digest.as_mut() {
            d.update(bytes);
        }
    }

    fn discard(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.target.tmp);
        }
    }

    /// Stores a whole answer: once, and only if it is whole.
    fn settle(&mut self) {
        if self.file.is_none() || self.broke.is_some() {
            return;
        }
        if self.expected.is_some_and(|n| n != self.written) {
            log::warn!(
                "the model's answer had {} bytes where its Content-Length said {:?}; not cached",
                self.written,
                self.expected
            );
            return self.discard();
        }
        match self.commit() {
            Ok(n) => self.landed = Some(n),
            Err(e) => log::warn!(
                "cannot store the cache entry {}: {e}",
                self.target.path.display()
            ),
        }
    }

    fn commit(&mut self) -> io::Result<u64> {
        let Some(mut f) = self.file.take() else {
            return Err(io::Error::other("nothing to commit"));
        };
        let result = (|| {
            self.header.length = self.written;
            self.header.sha256 = self
                .digest
                .take()
                .map(|d| hex(d.finish().as_ref()))
                .unwrap_or_default();
            let block = self
                .header
                .encode()
                .ok_or_else(|| io::Error::other("the header does not fit in 1 KiB"))?;
            f.write_all_at(&block, 0)?;
            f.flush()?;
            // Data first, then the name: after a crash the name points at a whole entry or at nothing.
            f.sync_all()?;
            if let Some(dir) = self.target.path.parent() {
                super::private_dir(dir)?;
            }
            fs::rename(&self.target.tmp, &self.target.path)?;
            Ok(HEADER_LEN as u64 + self.written)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.target.tmp);
        }
        result
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        self.discard();
    }
}

/// The client's side of a fill: reads the model's body, keeping a copy.
pub struct Tee(Arc<Mutex<Filling>>);

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pull(buf)
    }
}

/// The cache's side of a fill: finishes it once the client has been answered.
pub struct Fill(Arc<Mutex<Filling>>);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary file name no other writer (thread, process or replica) picks.
pub fn tmp_name(key: &Key) -> String {
    let mut r = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        r = (t ^ SEQ.fetch_add(1, Ordering::Relaxed)).to_le_bytes();
    }
    format!("{}.{}.{}.tmp", key.hex(), std::process::id(), hex(&r))
}

/// Starts a fill of `body` into `target`; without a target (or when the temporary
/// file cannot be made) the body is only passed through.
pub fn fill(
    body: Box<dyn Read + Send>,
    target: Target,
    header: Header,
    expected: Option<u64>,
) -> (Tee, Fill) {
    let file = if header.encode().is_none() {
        log::info!("an answer whose content type is over 700 bytes is not cached");
        None
    } else {
        create(&target.tmp)
            .map_err(|e| log::warn!("cannot create the cache file {}: {e}", target.tmp.display()))
            .ok()
    };
    let state = Arc::new(Mutex::new(Filling {
        body,
        file,
        target,
        header,
        expected,
        written: 0,
        digest: Some(ring::digest::Context::new(&ring::digest::SHA256)),
        eof: false,
        broke: None,
        landed: None,
    }));
    (Tee(state.clone()), Fill(state))
}

fn create(tmp: &Path) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    // Room for the header, written last.
    f.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    Ok(f)
}

impl Fill {
    /// Reads what the client did not (it may have gone), then stores the answer
    /// if it ended normally. Runs on the thread that relayed the answer.
    pub fn finish(self) -> Filled {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.file.is_some() && !s.eof && s.broke.is_none() {
            // The client went away: the answer is still worth keeping for the next one.
            let mut buf = vec![0u8; 64 * 1024];
            while s.file.is_some() && !s.eof && s.broke.is_none() {
                if let Err(e) = s.pull(&mut buf) {
                    if e.kind() != io::ErrorKind::Interrupted && s.broke.is_none() {
                        s.broke = Some(error::from_io(Upstream::Model, &e));
                    }
                }
            }
        }
        if let Some(e) = s.broke.clone() {
            return Filled::Failed(e);
        }
        s.settle();
        match s.landed {
            Some(n) => Filled::Landed(n),
            None => Filled::NotStored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken(usize);

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
            }
            self.0 -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mp-entry-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn key() -> Key {
        Key::from_bytes([7; 32])
    }

    fn target(d: &Path, cap: u64) -> Target {
        Target {
            tmp: d.join(tmp_name(&key())),
            path: d.join("ab").join(key().hex()),
            cap,
        }
    }

    fn header() -> Header {
        Header::new(&key(), 200, Some("application/json".into()), "m", "s")
    }

    fn stats() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    fn read_hit(path: &Path) -> Result<Vec<u8>, io::Error> {
        match open(path, &key(), Duration::from_secs(60), &stats())? {
            Opened::Hit(mut h) => {
                let mut v = Vec::new();
                h.read_to_end(&mut v)?;
                Ok(v)
            }
            Opened::Missing => Err(io::Error::other("missing")),
            Opened::Expired(_) => Err(io::Error::other("expired")),
            Opened::Corrupt(_, why) => Err(io::Error::other(why)),
        }
    }

    #[test]
    fn a_whole_answer_lands_and_reads_back() {
        let d = dir("whole");
        let body = b"{\"a\": 1}".to_vec();
        let t = target(&d, 1000);
        let path = t.path.clone();
        let (mut tee, fill) = fill(
            Box::new(io::Cursor::new(body.clone())),
            t,
            header(),
            Some(8),
        );
        let mut relayed = Vec::new();
        tee.read_to_end(&mut relayed).unwrap();
        assert_eq!(relayed, body);
        assert_eq!(fill.finish(), Filled::Landed(HEADER_LEN as u64 + 8));
        assert_eq!(read_hit(&path).unwrap(), body);
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_client_that_left_still_fills_the_entry() {
        let d = dir("left");
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let t = target(&d, 1 << 20);
        let path = t.path.clone();
        let (mut tee, fill) = fill(Box::new(io::Cursor::new(body.clone())), t, header(), None);
        let mut first = [0u8; 100];
        tee.read_exact(&mut first).unwrap();
        drop(tee);
        assert!(matches!(fill.finish(), Filled::Landed(_)));
        assert_eq!(read_hit(&path).unwrap(), body);
    }

    #[test]
    fn broken_short_or_too_big_answers_are_not_stored() {
        let d = dir("broken");
        let t = target(&d, 1000);
        let path = t.path.clone();
        let (mut tee, fill) = fill(Box::new(Broken(5)), t, header(), None);
        assert!(tee.read_to_end(&mut Vec::new()).is_err());
        assert!(
            matches!(fill.finish(), Filled::Failed(e) if e.code == crate::error::Code::ModelUnreachable)
        );
        let (_, fill) = super::fill(
            Box::new(io::Cursor::new(vec![1u8; 10])),
            target(&d, 1000),
            header(),
            Some(11),
        );
        assert_eq!(fill.finish(), Filled::NotStored);
        let (_, fill) = super::fill(
            Box::new(io::Cursor::new(vec![1u8; 10])),
            target(&d, 9),
            header(),
            None,
        );
        assert_eq!(fill.finish(), Filled::NotStored);
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            0,
            "temporary files removed"
        );
    }

    #[test]
    fn corrupt_entries_are_refused_or_cut() {
        let d = dir("corrupt");
        let body = vec![b'z'; 5000];
        let t = target(&d, 1 << 20);
        let path = t.path.clone();
        let (_, f) = fill(Box::new(io::Cursor::new(body.clone())), t, header(), None);
        assert!(matches!(f.finish(), Filled::Landed(_)));
        let good = fs::read(&path).unwrap();
        // Cut short: refused before a byte is served.
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(read_hit(&path)
            .unwrap_err()
            .to_string()
            .contains("bytes where"));
        // Another key's entry under this name.
        let other = good.clone();
        let text =
            String::from_utf8_lossy(&other[..HEADER_LEN]).replace(&key().hex(), &"0".repeat(64));
        let mut swapped = text.into_bytes();
        swapped.extend_from_slice(&other[HEADER_LEN..]);
        fs::write(&path, &swapped).unwrap();
        assert!(read_hit(&path)
            .unwrap_err()
            .to_string()
            .contains("another key"));
        // A flipped body byte: the read fails at the end and the entry goes.
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 10] = b'y';
        fs::write(&path, &flipped).unwrap();
        let e = read_hit(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(!path.exists());
    }
}
