//! Keeps the directory within its TTL and size: a background sweep every minute,
//! and sooner when a stored answer takes the total over the limit.
//!
//! It works from the directory alone (mtime: when an entry was written; atime,
//! set explicitly on each hit: when it was last used), so replicas sharing the
//! directory see each other's entries and evict by the same LRU order. Two
//! replicas sweeping at once may both remove a file; the second removal fails
//! harmlessly. A removed file that is being streamed stays readable until closed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Receiver;

use super::entry::remove_same;
use super::Stats;

/// Between sweeps when nothing asks for one sooner.
const INTERVAL: Duration = Duration::from_secs(60);

/// A temporary file untouched this long belongs to a writer that died.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// Starts the sweeping thread.
pub fn spawn(dir: PathBuf, max_bytes: u64, ttl: Duration, stats: Arc<Stats>, wake: Receiver<()>) {
    let spawned = thread::Builder::new()
        .name("cache-janitor".into())
        .spawn(move || loop {
            sweep(&dir, max_bytes, ttl, &stats);
            let _ = wake.recv_timeout(INTERVAL);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the cache janitor: {e}; the cache will not be trimmed");
    }
}

struct Found {
    path: PathBuf,
    meta: fs::Metadata,
    used: SystemTime,
}

/// One pass: removes expired entries and stale temporary files, then the least
/// recently used entries until the total is 90 % of `max_bytes`; updates the gauges.
pub fn sweep(dir: &Path, max_bytes: u64, ttl: Duration, stats: &Stats) {
    let now = SystemTime::now();
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    let mut live = Vec::new();
    for sub in read_dir(dir) {
        let name = sub.file_name();
        let name = name.to_string_lossy();
        if name == "tmp" {
            for f in read_dir(&sub.path()) {
                let stale = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| age(t) > STALE_TMP);
                if stale && fs::remove_file(f.path()).is_ok() {
                    log::info!(
                        "removed a stale cache temporary file {}",
                        f.path().display()
                    );
                }
            }
            continue;
        }
        if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        for f in read_dir(&sub.path()) {
            let fname = f.file_name();
            if fname.len() != 64
                || !fname
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit())
            {
                continue;
            }
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let written = meta.modified().unwrap_or(now);
            if age(written) >= ttl {
                if remove_same(&f.path(), &meta) {
                    stats.removed(&stats.expired, meta.len());
                }
                continue;
            }
            let used = meta.accessed().unwrap_or(written).max(written);
            live.push(Found {
                path: f.path(),
                meta,
                used,
            });
        }
    }
    let mut total: u64 = live.iter().map(|f| f.meta.len()).sum();
    if total > max_bytes {
        live.sort_by_key(|f| f.used);
        let target = max_bytes / 10 * 9;
        let mut kept = Vec::new();
        for f in live {
            if total > target {
                if remove_same(&f.path, &f.meta) {
                    stats.removed(&stats.evicted, f.meta.len());
                }
                total = total.saturating_sub(f.meta.len());
            } else {
                kept.push(f);
            }
        }
        live = kept;
    }
    stats.set_totals(live.len() as u64, total);
}

fn read_dir(dir: &Path) -> Vec<fs::DirEntry> {
    match fs::read_dir(dir) {
        Ok(it) => it.flatten().collect(),
        Err(e) => {
            log::warn!("cannot read the cache directory {}: {e}", dir.display());
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, name: u8, size: usize, used_secs_ago: u64) -> PathBuf {
        let hex = format!("{name:02x}").repeat(32);
        let sub = dir.join(&hex[..2]);
        fs::create_dir_all(&sub).unwrap();
        let p = sub.join(&hex);
        fs::write(&p, vec![0u8; size]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(used_secs_ago);
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
        p
    }

    #[test]
    fn expired_then_least_recently_used_go() {
        let d = std::env::temp_dir().join(format!("mp-janitor-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let old = entry(&d, 1, 100, 5000);
        let lru = entry(&d, 2, 100, 300);
        let mid = entry(&d, 3, 100, 200);
        let new = entry(&d, 4, 100, 10);
        fs::create_dir_all(d.join("tmp")).unwrap();
        fs::write(d.join("tmp/x.tmp"), b"fresh").unwrap();
        fs::write(d.join("README"), b"not ours").unwrap();
        let stats = Stats::default();
        sweep(&d, 150, Duration::from_secs(3600), &stats);
        assert!(!old.exists(), "past its TTL");
        assert!(
            !lru.exists() && !mid.exists(),
            "the least recently used go first, down to 90 %"
        );
        assert!(new.exists());
        assert!(d.join("tmp/x.tmp").exists() && d.join("README").exists());
        let n = stats.numbers();
        assert_eq!((n.entries, n.bytes, n.expired, n.evicted), (1, 100, 1, 2));
    }
}
