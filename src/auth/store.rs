//! The token store: one file per server under `<state-dir>/tokens`, mode 0600,
//! written atomically (temporary file, fsync, rename, fsync of the directory), so
//! a crash never leaves a torn file. A corrupt or unreadable file is logged and
//! treated as empty.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What is kept for one server.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stored {
    /// The access token.
    pub(super) access: Option<String>,
    /// The refresh token.
    pub(super) refresh: Option<String>,
    /// SHA-256 of the auth token already exchanged.
    pub(super) consumed: Option<String>,
}

/// The directory of token files.
#[derive(Debug, Clone)]
pub(super) struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// A store under `state_dir/tokens` (created on first save).
    pub(super) fn new(state_dir: &std::path::Path) -> TokenStore {
        TokenStore {
            dir: state_dir.join("tokens"),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// What was stored for `id`; `None` when nothing usable is there.
    pub(super) fn load(&self, id: &str) -> Option<Stored> {
        let path = self.path(id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!(
                    "token store {} is unreadable ({e}); starting without it",
                    path.display()
                );
                return None;
            }
        };
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                // serde_json's message names a position, never the content.
                log::warn!(
                    "token store {} is corrupt ({e}); starting without it",
                    path.display()
                );
                None
            }
        }
    }

    /// Replaces what is stored for `id`, atomically.
    pub(super) fn save(&self, id: &str, stored: &Stored) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let tmp = self.dir.join(format!(".{id}.json.tmp"));
        let body = serde_json::to_vec(stored).map_err(std::io::Error::other)?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.path(id))?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mode_and_corruption() {
        let dir = std::env::temp_dir().join(format!("mp-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = TokenStore::new(&dir);
        assert_eq!(store.load("a"), None);
        let s = Stored {
            access: Some("x".into()),
            refresh: Some("y".into()),
            consumed: None,
        };
        store.save("a", &s).unwrap();
        assert_eq!(store.load("a"), Some(s));
        let mode = fs::metadata(dir.join("tokens/a.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(dir.join("tokens/a.json"), "{\"access\": tru").unwrap();
        assert_eq!(store.load("a"), None);
    }
}
