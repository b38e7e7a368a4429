//! The secrets the server issues (API keys, vault tokens): a prefix and 40 random base-62
//! characters, stored only as their SHA-256. Their format lives here, below both the keys
//! that use it ([`crate::auth`]) and the scanner that looks for leaked ones
//! ([`crate::security::scan`]).

use rand::Rng;
use sha2::{Digest, Sha256};

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated secret: the secret itself (shown once) and what is stored of it.
#[derive(Debug)]
pub struct NewSecret {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
}

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "ap_";
/// The prefix of every vault token.
pub const VAULT_TOKEN_PREFIX: &str = "vt_";
/// The random characters after a secret's prefix.
pub const SECRET_BODY_LEN: usize = 40;

/// Generates a secret: `prefix` and 40 random base-62 characters (API keys `ap_`, vault
/// tokens `vt_`).
pub fn generate_secret(prefix: &str) -> NewSecret {
    let mut rng = rand::rng();
    let body: String = (0..SECRET_BODY_LEN)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect();
    let secret = format!("{prefix}{body}");
    NewSecret {
        prefix: secret[..8].to_string(),
        hash: hash_key(&secret),
        secret,
    }
}

/// The stored form of a secret.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
