//! The inference cache: complete 2xx answers on disk, keyed by what the request
//! means ([`Key`]), so that a repeat is answered without the PACS or the model.
//!
//! `key` makes the key of a plan; `entry` is one file (a header, the body),
//! written through a tee and renamed into place, read back with checks;
//! `flight` is the single-flight bookkeeping; `janitor` applies the TTL and the
//! size limit from the directory alone, so replicas can share it. When to look
//! up, lead, wait or prefetch is the server's business (`server::cached`).

mod entry;
mod flight;
mod janitor;
mod key;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};

pub use entry::{Fill, Filled, Hit, Tee};
pub use flight::Flights;
pub use key::Key;

use crate::plan::Plan;

/// How the cache is set up; `None` in [`Cache::new`] turns it off.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where entries live (may be shared by replicas).
    pub dir: PathBuf,
    /// Size limit of the directory; least recently used entries go beyond it.
    pub max_bytes: u64,
    /// Entries older than this are not served.
    pub ttl: Duration,
    /// Threads running prefetches.
    pub prefetch_workers: usize,
}

/// The cache's counters and gauges: atomics, so /metrics and /status never wait on I/O.
#[derive(Default)]
pub struct Stats {
    /// Answers served from an entry (followers of a flight included).
    pub hits: AtomicU64,
    /// Inferences run for a cacheable request.
    pub misses: AtomicU64,
    /// Requests that waited for an identical inference already running.
    pub joined: AtomicU64,
    /// Entries stored.
    pub stored: AtomicU64,
    /// Whole answers that could not be stored (disk, size).
    pub not_stored: AtomicU64,
    /// Entries removed by the size limit.
    pub evicted: AtomicU64,
    /// Entries removed past their TTL.
    pub expired: AtomicU64,
    /// Entries removed as corrupt.
    pub corrupt: AtomicU64,
    /// Entries removed by DELETE.
    pub purged: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    /// Prefetches waiting for a prefetch worker.
    pub prefetch_queued: AtomicU64,
    /// Prefetches running.
    pub prefetch_running: AtomicU64,
    /// Prefetches that stored an answer.
    pub prefetch_done: AtomicU64,
    /// Prefetches with nothing to do (already cached or already running).
    pub prefetch_skipped: AtomicU64,
    /// Prefetches whose inference failed.
    pub prefetch_failed: AtomicU64,
}

/// One reading of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Numbers {
    pub hits: u64,
    pub misses: u64,
    pub joined: u64,
    pub stored: u64,
    pub not_stored: u64,
    pub evicted: u64,
    pub expired: u64,
    pub corrupt: u64,
    pub purged: u64,
    pub entries: u64,
    pub bytes: u64,
    pub prefetch_queued: u64,
    pub prefetch_running: u64,
    pub prefetch_done: u64,
    pub prefetch_skipped: u64,
    pub prefetch_failed: u64,
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Takes one from a gauge, never below zero.
pub fn drop_one(c: &AtomicU64) {
    sub(c, 1);
}

fn sub(c: &AtomicU64, n: u64) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

impl Stats {
    /// An entry of `bytes` was removed, for the reason `counter` counts.
    fn removed(&self, counter: &AtomicU64, bytes: u64) {
        bump(counter);
        sub(&self.entries, 1);
        sub(&self.bytes, bytes);
    }

    fn set_totals(&self, entries: u64, bytes: u64) {
        self.entries.store(entries, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// The numbers now.
    pub fn numbers(&self) -> Numbers {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Numbers {
            hits: g(&self.hits),
            misses: g(&self.misses),
            joined: g(&self.joined),
            stored: g(&self.stored),
            not_stored: g(&self.not_stored),
            evicted: g(&self.evicted),
            expired: g(&self.expired),
            corrupt: g(&self.corrupt),
            purged: g(&self.purged),
            entries: g(&self.entries),
            bytes: g(&self.bytes),
            prefetch_queued: g(&self.prefetch_queued),
            prefetch_running: g(&self.prefetch_running),
            prefetch_done: g(&self.prefetch_done),
            prefetch_skipped: g(&self.prefetch_skipped),
            prefetch_failed: g(&self.prefetch_failed),
        }
    }
}

/// The cache directory and its numbers.
pub struct Cache {
    settings: Option<Settings>,
    stats: Arc<Stats>,
    wake: Sender<()>,
    wake_rx: Receiver<()>,
}

impl Cache {
    /// The cache as configured; `None` turns it off.
    pub fn new(settings: Option<Settings>) -> Cache {
        let (wake, wake_rx) = bounded(1);
        Cache {
            settings,
            stats: Arc::new(Stats::default()),
            wake,
            wake_rx,
        }
    }

    /// The settings, when the cache is on.
    pub fn settings(&self) -> Option<&Settings> {
        self.settings.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Creates the directory, takes stock of what is in it and starts the janitor.
    pub fn start(&self) -> Result<(), String> {
        let Some(s) = &self.settings else {
            return Ok(());
        };
        for d in [s.dir.clone(), s.dir.join("tmp")] {
            private_dir(&d).map_err(|e| {
                format!(
                    "the proxy needs a writable --cache-dir: {}: {e}",
                    d.display()
                )
            })?;
        }
        janitor::sweep(&s.dir, s.max_bytes, s.ttl, &self.stats);
        let n = self.stats.numbers();
        log::info!(
            "cache in {}: {} entries, {} bytes of at most {}; TTL {}s",
            s.dir.display(),
            n.entries,
            n.bytes,
            s.max_bytes,
            s.ttl.as_secs()
        );
        janitor::spawn(
            s.dir.clone(),
            s.max_bytes,
            s.ttl,
            self.stats.clone(),
            self.wake_rx.clone(),
        );
        Ok(())
    }

    /// The key of `plan`; `None` when the cache is off or the model opts out.
    pub fn key(&self, plan: &Plan) -> Option<Key> {
        (self.settings.is_some() && plan.model.cache).then(|| Key::of(plan))
    }

    fn path(&self, dir: &Path, key: &Key) -> PathBuf {
        let hex = key.hex();
        dir.join(&hex[..2]).join(hex)
    }

    /// The fresh, whole entry for `key`, if there is one; an expired or corrupt
    /// one is removed and counts as none.
    pub fn open(&self, key: &Key) -> Option<Hit> {
        let s = self.settings.as_ref()?;
        let path = self.path(&s.dir, key);
        match entry::open(&path, key, s.ttl, &self.stats) {
            Ok(entry::Opened::Hit(h)) => Some(*h),
            Ok(entry::Opened::Missing) => None,
            Ok(entry::Opened::Expired(meta)) => {
                if entry::remove_same(&path, &meta) {
                    self.stats.removed(&self.stats.expired, meta.len());
                }
                None
            }
            Ok(entry::Opened::Corrupt(meta, why)) => {
                log::warn!("cache entry {} is corrupt ({why}); removed", path.display());
                if entry::remove_same(&path, &meta) {
                    self.stats.removed(&self.stats.corrupt, meta.len());
                }
                None
            }
            Err(e) => {
                log::warn!("cannot read the cache entry {}: {e}", path.display());
                None
            }
        }
    }

    /// Tees the model's answer into a new entry for `key` as the client reads it.
    pub fn fill(
        &self,
        key: &Key,
        plan: &Plan,
        status: u16,
        content_type: Option<String>,
        length: Option<usize>,
        body: Box<dyn Read + Send>,
    ) -> (Tee, Fill) {
        let s = self.settings.as_ref();
        let dir = s.map(|s| s.dir.clone()).unwrap_or_default();
        let target = entry::Target {
            tmp: dir.join("tmp").join(entry::tmp_name(key)),
            path: self.path(&dir, key),
            // One answer may not crowd out the rest (nor is a whole-cache answer worth keeping).
            cap: s.map(|s| s.max_bytes / 4).unwrap_or(0),
        };
        let header = entry::Header::new(key, status, content_type, &plan.model.id, &plan.server.id);
        entry::fill(body, target, header, length.map(|n| n as u64))
    }

    /// Finishes a fill (see [`Fill::finish`]) and counts it.
    pub fn finish(&self, fill: Fill) -> Filled {
        let stored = fill.finish();
        match &stored {
            Filled::Landed(n) => {
                bump(&self.stats.stored);
                self.stats.entries.fetch_add(1, Ordering::Relaxed);
                let total = self.stats.bytes.fetch_add(*n, Ordering::Relaxed) + n;
                if self.settings.as_ref().is_some_and(|s| total > s.max_bytes) {
                    let _ = self.wake.try_send(());
                }
            }
            Filled::NotStored => bump(&self.stats.not_stored),
            Filled::Failed(_) => {}
        }
        stored
    }

    /// Removes the entry for `key`; false when there was none.
    pub fn purge(&self, key: &Key) -> io::Result<bool> {
        let Some(s) = &self.settings else {
            return Ok(false);
        };
        let path = self.path(&s.dir, key);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.stats.removed(&self.stats.purged, size);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The cache's part of the status page.
    pub fn status(&self) -> Value {
        let Some(s) = &self.settings else {
            return json!({"enabled": false});
        };
        let n = self.stats.numbers();
        json!({
            "enabled": true,
            "dir": s.dir.display().to_string(),
            "maxBytes": s.max_bytes,
            "ttlSeconds": s.ttl.as_secs(),
            "entries": n.entries,
            "bytes": n.bytes,
            "hits": n.hits,
            "misses": n.misses,
            "joined": n.joined,
            "evicted": n.evicted,
            "expired": n.expired,
            "prefetch": {
                "workers": s.prefetch_workers,
                "queued": n.prefetch_queued,
                "running": n.prefetch_running,
                "done": n.prefetch_done,
                "skipped": n.prefetch_skipped,
                "failed": n.prefetch_failed,
            },
        })
    }
}

/// `dir`, created if missing and private to this user (answers are patient data).
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}
