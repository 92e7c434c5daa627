//! The pair's shared key.

use std::{fmt, os::unix::fs::PermissionsExt, path::Path};

/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key file read.
pub const MAX_KEY_LEN: usize = 4096;

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file; point [sync] key_file at a file holding the key")]
    NotAFile { path: String },
    #[error("{path} can be read or written by group or others (mode {mode:o}); restrict it with `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error("the key in {path} has {len} bytes, fewer than {MIN_KEY_LEN}; make a new one with `head -c 32 /dev/urandom | base64 > {path}` and copy it to both nodes")]
    TooShort { path: String, len: usize },
    #[error("{path} is larger than {MAX_KEY_LEN} bytes; it should hold only the key")]
    TooLong { path: String },
}

/// A key shared by the pair (`MIN_KEY_LEN` bytes or more).
#[derive(Clone)]
pub struct SyncKey(Vec<u8>);

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncKey({} bytes)", self.0.len())
    }
}

impl SyncKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        Self::checked(bytes, "the key")
    }

    fn checked(bytes: &[u8], path: &str) -> Result<Self, KeyError> {
        if bytes.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { path: path.into() });
        }
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.into(),
                len: bytes.len(),
            });
        }
        Ok(Self(bytes.to_vec()))
    }

    /// Reads the key file at `path`: a regular file that only its owner
    /// may read or write; one trailing newline is not part of the key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let read = |source| KeyError::Read {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile { path: shown });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: shown, mode });
        }
        if meta.len() > MAX_KEY_LEN as u64 {
            return Err(KeyError::TooLong { path: shown });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let key = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        Self::checked(key, &shown)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, content: &[u8], mode: u32) -> Self {
            let path = std::env::temp_dir().join(format!("lb-sync-{}-{name}", std::process::id()));
            std::fs::write(&path, content).expect("write key");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn key_files_must_be_private_long_enough_and_files() {
        let good = TempFile::new("good", b"0123456789abcdef0123\n", 0o600);
        let key = SyncKey::from_file(&good.0).expect("good key");
        assert_eq!(key.bytes(), b"0123456789abcdef0123");
        assert!(!format!("{key:?}").contains("0123"), "Debug hides the key");

        let exposed = TempFile::new("exposed", b"0123456789abcdef0123", 0o644);
        let error = SyncKey::from_file(&exposed.0).expect_err("0644 refused");
        assert!(error.to_string().contains("chmod 600"), "{error}");

        let short = TempFile::new("short", b"short\n", 0o600);
        let error = SyncKey::from_file(&short.0).expect_err("short refused");
        assert!(error.to_string().contains("/dev/urandom"), "{error}");

        let error = SyncKey::from_file(&std::env::temp_dir()).expect_err("a directory");
        assert!(matches!(error, KeyError::NotAFile { .. }), "{error}");
        let error = SyncKey::from_file(Path::new("/nonexistent/key")).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/key"), "{error}");
    }
}
