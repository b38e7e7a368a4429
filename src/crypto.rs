//! Secrets at rest: XChaCha20-Poly1305 under one master key.
//!
//! A sealed value is self-describing and versioned, `v1:<base64(nonce ‖ ciphertext ‖ tag)>`
//! with a random 24-byte nonce, so a later key or algorithm can sit beside it. The master key
//! comes from `AGENTPLANE_MASTER_KEY` (base64 of 32 bytes), or a key file
//! (`--master-key-file`), or else a key file generated at first start in the data directory
//! (`master.key`, mode 0600). Losing the key loses the secrets, never the rest of the data.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

const VERSION: &str = "v1:";
const NONCE_LEN: usize = 24;

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("not a sealed value of a known version")]
    UnknownFormat,
    #[error("the sealed value is not valid base64 or too short")]
    Malformed,
    #[error("the sealed value was tampered with or sealed under another key")]
    Rejected,
}

/// Seals and opens secrets.
#[derive(Clone)]
pub struct Crypto {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto { key: <redacted> }")
    }
}

impl Crypto {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// A key from its base64 text.
    pub fn from_base64(text: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| anyhow::anyhow!("the master key is not base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the master key must be 32 bytes (base64 of 32 bytes)"))?;
        Ok(Self::new(&key))
    }

    /// The master key: the given base64 text, else the given key file, else `master.key` in
    /// `data_dir` (created with a fresh random key, mode 0600, when missing).
    pub fn load(
        key_base64: Option<&str>, key_file: Option<&Path>, data_dir: &Path,
    ) -> anyhow::Result<Self> {
        if let Some(text) = key_base64.filter(|t| !t.trim().is_empty()) {
            return Self::from_base64(text);
        }
        let path: PathBuf = match key_file {
            Some(p) => p.to_path_buf(),
            None => data_dir.join("master.key"),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Self::from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && key_file.is_none() => {
                std::fs::create_dir_all(data_dir)?;
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private(&path, &STANDARD.encode(key))?;
                tracing::info!(path = %path.display(), "generated a master key for secrets at rest");
                Ok(Self::new(&key))
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot read the master key {}: {e}",
                path.display()
            )),
        }
    }

    /// A fresh random key as base64 text (the form key files and `AGENTPLANE_MASTER_KEY` hold).
    pub fn new_key_base64() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    /// Writes a key file readable by its owner only (mode 0600); fails when it exists.
    pub fn write_key_file(path: &Path, key_base64: &str) -> anyhow::Result<()> {
        write_private(path, key_base64)
    }

    /// Seals `plaintext`: `v1:<base64 nonce+ciphertext>`.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption fails only past the cipher's length limit (256 GiB), which no request
        // body reaches.
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{VERSION}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed by [`Crypto::encrypt`] under the same key.
    pub fn decrypt(&self, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let body = sealed
            .strip_prefix(VERSION)
            .ok_or(CryptoError::UnknownFormat)?;
        let bytes = STANDARD.decode(body).map_err(|_| CryptoError::Malformed)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| CryptoError::Rejected)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_fresh_nonces() {
        let c = Crypto::new(&[7u8; 32]);
        let a = c.encrypt(b"sk-secret");
        let b = c.encrypt(b"sk-secret");
        assert!(a.starts_with("v1:") && a != b, "random nonces");
        assert!(!a.contains("sk-secret"));
        assert_eq!(c.decrypt(&a).as_deref(), Ok(&b"sk-secret"[..]));
        assert_eq!(c.decrypt(&c.encrypt(b"")).as_deref(), Ok(&b""[..]));
    }

    #[test]
    fn tampering_and_wrong_keys_are_rejected() {
        let c = Crypto::new(&[7u8; 32]);
        let sealed = c.encrypt(b"payload");
        let mut bytes = STANDARD.decode(&sealed[3..]).expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("v1:{}", STANDARD.encode(&bytes));
        assert_eq!(c.decrypt(&tampered), Err(CryptoError::Rejected));
        assert_eq!(
            Crypto::new(&[8u8; 32]).decrypt(&sealed),
            Err(CryptoError::Rejected)
        );
        assert_eq!(c.decrypt("v2:abc"), Err(CryptoError::UnknownFormat));
        assert_eq!(c.decrypt("v1:!!"), Err(CryptoError::Malformed));
        assert_eq!(c.decrypt("v1:AAAA"), Err(CryptoError::Malformed));
    }

    #[test]
    fn generates_a_private_key_file_once_and_reads_it_back() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("crypto_test"));
        let first = Crypto::load(None, None, &dir).expect("generates");
        let sealed = first.encrypt(b"x");
        let second = Crypto::load(None, None, &dir).expect("reads");
        assert_eq!(second.decrypt(&sealed).as_deref(), Ok(&b"x"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("master.key"))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let env = STANDARD.encode([9u8; 32]);
        let from_env = Crypto::load(Some(&env), None, &dir).expect("env key");
        assert_eq!(from_env.decrypt(&sealed), Err(CryptoError::Rejected));
        assert!(Crypto::load(Some("c2hvcnQ="), None, &dir).is_err());
        assert!(Crypto::load(None, Some(&dir.join("absent.key")), &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
