//! Encryption of credentials at rest.
//!
//! XChaCha20-Poly1305 under the master key, with a fresh random 24-byte nonce per value and
//! the owning record's ID as associated data (a ciphertext moved to another record fails to
//! open). The master key comes from `HOOKLINE_MASTER_KEY` (base64 of 32 bytes) or from
//! `master.key` in the data directory, created with mode 0600 on first start.
//!
//! A wrong or lost key makes stored credentials unreadable: [`SecretBox::open`] returns an
//! error the caller reports; nothing panics.

use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

const NONCE_LEN: usize = 24;

#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

/// The master key's file in the data directory (when `HOOKLINE_MASTER_KEY` is not set).
pub const MASTER_KEY_FILE: &str = "master.key";

/// Why stored credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error("stored credentials cannot be decrypted with the current master key (was HOOKLINE_MASTER_KEY or master.key changed?)")]
    Key,
    /// Decrypted, but not a configuration of the recorded kind: written by another hookline
    /// version (a downgrade), or damaged. The master key is not the cause: say so.
    #[error("stored credentials were decrypted but do not decode as a {0} configuration (written by another hookline version?)")]
    Format(&'static str),
}

impl DecryptError {
    /// What could not be done to the credentials, for "… cannot be {}" in an answer that
    /// points to the daemon log (which has the whole error).
    pub fn cannot_be(&self) -> &'static str {
        match self {
            DecryptError::Key => "decrypted with the current master key",
            DecryptError::Format(_) => "decoded (written by another hookline version?)",
        }
    }
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        let key = Key::from(key);
        SecretBox { cipher: XChaCha20Poly1305::new(&key) }
    }

    /// Decodes `HOOKLINE_MASTER_KEY` (base64 of 32 bytes); also what `check-config` checks.
    pub fn env_key(k: &str) -> anyhow::Result<[u8; 32]> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(k.trim()).context(
            "HOOKLINE_MASTER_KEY is not valid base64 (standard alphabet, padded: `openssl rand -base64 32` makes one)",
        )?;
        match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(key) => Ok(key),
            Err(_) => bail!("HOOKLINE_MASTER_KEY must decode to exactly 32 bytes, got {}", bytes.len()),
        }
    }

    /// Loads the master key from `env_key` (base64) or `{data_dir}/master.key`, creating the
    /// file on first start.
    pub fn load(env_key: Option<&str>, data_dir: &Path) -> anyhow::Result<SecretBox> {
        let b64 = base64::engine::general_purpose::STANDARD;
        // Absolute in what is logged: a relative path says little in a service's journal.
        let path = data_dir.join(MASTER_KEY_FILE);
        let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let read_file = || -> anyhow::Result<[u8; 32]> {
            let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", shown.display()))?;
            let bytes = b64.decode(text.trim()).with_context(|| format!("{} is not valid base64", shown.display()))?;
            match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(key) => Ok(key),
                Err(_) => bail!("{} must hold base64 of 32 bytes", shown.display()),
            }
        };
        if let Some(k) = env_key {
            let key = Self::env_key(k)?;
            // The operator who set the variable beside a key file may not know the file is
            // ignored: say so when they differ (whatever was sealed with the file's key will
            // not open, and this is the line that says why).
            if path.exists() {
                match read_file() {
                    Ok(file_key) if file_key == key => {}
                    Ok(_) => tracing::warn!(
                        path = %shown.display(),
                        "HOOKLINE_MASTER_KEY is in use and differs from the key in this file, which is ignored: \
                         credentials sealed with the file's key cannot be opened"
                    ),
                    Err(e) => tracing::warn!(
                        path = %shown.display(),
                        error = format!("{e:#}"),
                        "HOOKLINE_MASTER_KEY is in use; this key file beside it is ignored (and cannot be read)"
                    ),
                }
            }
            return Ok(SecretBox::new(key));
        }
        if path.exists() {
            return Ok(SecretBox::new(read_file()?));
        }
        let key: [u8; 32] = <[u8; 32]>::generate();
        write_private(&path, b64.encode(key).as_bytes())?;
        tracing::info!(path = %shown.display(), "created a new master key; back it up with the data directory");
        Ok(SecretBox::new(key))
    }

    /// Encrypts `plaintext`, binding it to `aad` (the owning record's ID).
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> String {
        let nonce = XNonce::generate();
        // Encryption only fails for messages beyond the cipher's length limit (256 GiB).
        let ct = self.cipher.encrypt(&nonce, Payload { msg: plaintext, aad: aad.as_bytes() }).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str, aad: &str) -> Result<Vec<u8>, DecryptError> {
        let raw = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| DecryptError::Key)?;
        if raw.len() < NONCE_LEN {
            return Err(DecryptError::Key);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| DecryptError::Key)?;
        self.cipher.decrypt(&nonce, Payload { msg: ct, aad: aad.as_bytes() }).map_err(|_| DecryptError::Key)
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    // The file's directory entry must survive a power loss too, or the next start would make
    // a new key and every sealed credential would become unreadable.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("sync {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_aad_binding() {
        let b = SecretBox::new([7u8; 32]);
        let s = b.seal(b"hello", "conn_1");
        assert_eq!(b.open(&s, "conn_1").unwrap(), b"hello");
        assert!(b.open(&s, "conn_2").is_err());
        assert!(SecretBox::new([8u8; 32]).open(&s, "conn_1").is_err());
        assert!(b.open("not base64!", "conn_1").is_err());
    }

    #[test]
    fn key_file_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(None, dir.path()).unwrap();
        let sealed = a.seal(b"x", "id");
        let b = SecretBox::load(None, dir.path()).unwrap();
        assert_eq!(b.open(&sealed, "id").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(SecretBox::load(Some("short"), dir.path()).is_err());
    }
}
