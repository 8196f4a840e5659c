//! The secrets that sign access tokens, and where a generated one is kept.
//!
//! Each key has an id (`kid`, the first 8 bytes of its SHA-256, hex: it
//! names the key without revealing it). Tokens are signed with the current
//! key and carry its `kid`; a previous key, while configured, still checks
//! the tokens it signed, so a key rotates without logging anyone out (and
//! refresh tokens, which are not signed, outlive any rotation).
//!
//! Without a configured secret, one is generated at the first start and
//! kept in `<data-dir>/jwt_secret` (by the embedded node; the nodes of a
//! cluster share one in their shared directory), created with mode 0600 (written to a
//! temporary file of that mode, synced, renamed); a file found with wider
//! permissions is narrowed, with a warning. The data directory itself is
//! made 0700: the user store in it holds password hashes. Versions before
//! this kept the secret in the user store's `meta` tree; it is moved to
//! the file at the next start, so tokens issued before stay valid.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wallet_storage::users::{UserStore, UserStoreError};

use crate::random::{hex, random_token};

/// The file a generated secret is kept in, under the data directory.
pub const SECRET_FILE: &str = "jwt_secret";

/// The `meta` key that held a generated secret before [`SECRET_FILE`].
const LEGACY_META_KEY: &str = "jwt_secret";

/// Why the keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file or the data directory could not be read, written or narrowed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The stored secret is shorter than any secret we make.
    #[error("{path} holds fewer than {min} bytes; remove it to generate a new secret")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The least accepted.
        min: usize,
    },
    /// The user store failed while moving a secret out of it.
    #[error("{0}")]
    Store(#[from] UserStoreError),
}

/// A signing secret and its id.
#[derive(Clone)]
pub struct SigningKey {
    /// The key's id, sent as the token header's `kid`.
    pub kid: String,
    /// The secret.
    pub secret: Vec<u8>,
}

impl SigningKey {
    /// The key of `secret`, with its id.
    pub fn new(secret: &[u8]) -> SigningKey {
        SigningKey { kid: hex(&Sha256::digest(secret)[..8]), secret: secret.to_vec() }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

/// Makes `dir` (the data directory) exist with mode 0700, narrowing it if
/// others could read it.
pub fn private_directory(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    narrow(dir, 0o700)
}

#[cfg(unix)]
fn narrow(path: &Path, mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let permissions = std::fs::metadata(path).map_err(io(path))?.permissions();
    if permissions.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", permissions.mode() & 0o777),
            "others could read this; narrowing it to {mode:o}");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn narrow(_path: &Path, _mode: u32) -> Result<(), KeyError> {
    Ok(())
}

/// Writes `secret` to `path` as a new 0600 file, replacing it whole.
fn write_private(path: &Path, secret: &[u8]) -> Result<(), KeyError> {
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary).map_err(io(&temporary))?;
    // A temporary file left by a crash may have been made wider.
    narrow(&temporary, 0o600)?;
    file.write_all(secret).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// The generated secret of the node whose data directory is `data_dir`:
/// read from [`SECRET_FILE`], moved there from the user store, or made.
pub async fn generated_secret(data_dir: &Path, users: &UserStore) -> Result<Vec<u8>, KeyError> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(secret) => {
            narrow(&path, 0o600)?;
            if secret.len() < crate::auth::SECRET_LEN_MIN {
                return Err(KeyError::TooShort { path, min: crate::auth::SECRET_LEN_MIN });
            }
            return Ok(secret);
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(KeyError::Io { path, source: error }),
    }
    let secret = match users.meta(LEGACY_META_KEY)? {
        Some(legacy) => legacy,
        None => random_token(32).into_bytes(),
    };
    write_private(&path, &secret)?;
    users.remove_meta(LEGACY_META_KEY).await?;
    tracing::info!(path = %path.display(), "the token signing secret is kept in this file (mode 0600)");
    Ok(secret)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> anyhow::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    }

    #[tokio::test]
    async fn a_secret_moves_out_of_the_store_into_a_0600_file_and_stays() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let users = UserStore::open(&dir.path().join(wallet_storage::users::FILE_NAME))?;
        users.set_meta(LEGACY_META_KEY, &[b'k'; 64]).await?;
        let secret = generated_secret(dir.path(), &users).await?;
        assert_eq!(secret, vec![b'k'; 64], "tokens signed before stay valid");
        assert_eq!(users.meta(LEGACY_META_KEY)?, None);
        let path = dir.path().join(SECRET_FILE);
        assert_eq!(mode(&path)?, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        assert_eq!(generated_secret(dir.path(), &users).await?, secret);
        assert_eq!(mode(&path)?, 0o600, "narrowed");
        Ok(())
    }

    #[test]
    fn a_key_id_names_the_secret_without_showing_it() {
        let key = SigningKey::new(b"0123456789abcdef0123456789abcdef");
        assert_eq!(key.kid.len(), 16);
        assert_ne!(key.kid, SigningKey::new(b"another secret of thirty-two bytes").kid);
        assert!(!format!("{key:?}").contains("0123"));
    }
}
