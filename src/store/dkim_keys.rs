//! DKIM keys' persistence: each hosted domain's signing keys, newest first.
//!
//! A key never replaces another (mail signed with the old one must go on verifying while its
//! record is published), so a domain may hold several, one per selector.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::crypto::Cipher;
use super::{Millis, StoreError};

/// A stored DKIM key.
#[derive(Debug, Clone)]
pub struct DkimKeyRecord {
    /// Signing domain.
    pub domain: String,
    /// Selector.
    pub selector: String,
    /// `ed25519` or `rsa`.
    pub algorithm: String,
    /// Private key in its storage encoding: `plain:<base64 DER>`, or sealed under the master
    /// key (`enc:v1:...`) when encryption at rest is on.
    pub private_key: String,
    /// Public key, base64, as published in DNS.
    pub public_key: String,
    /// Creation time.
    pub created_at: Millis,
}

/// Why a stored private key cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("stored DKIM key for {domain} is unusable: {reason}")]
pub struct UnusableKey {
    /// Signing domain.
    pub domain: String,
    /// What is wrong.
    pub reason: String,
}

impl DkimKeyRecord {
    /// The stored form of a private key's DER: sealed when a cipher is given.
    pub fn encode_private(der: &[u8], cipher: Option<&Cipher>) -> String {
        match cipher {
            Some(c) => c.seal_secret(der),
            None => format!("plain:{}", B64.encode(der)),
        }
    }

    /// The private key's DER from its stored form.
    pub fn private_der(&self, cipher: Option<&Cipher>) -> Result<Vec<u8>, UnusableKey> {
        let bad = |reason: String| UnusableKey {
            domain: self.domain.clone(),
            reason,
        };
        if let Some(encoded) = self.private_key.strip_prefix("plain:") {
            return B64.decode(encoded).map_err(|e| bad(e.to_string()));
        }
        if Cipher::is_sealed_secret(&self.private_key) {
            let cipher =
                cipher.ok_or_else(|| bad("the key is encrypted; set MAIRUST_MASTER_KEY".into()))?;
            return cipher
                .open_secret(&self.private_key)
                .map_err(|e| bad(e.to_string()));
        }
        Err(bad("unknown key encoding".into()))
    }
}

/// The keys of `keys` (newest first) that sign: the first of each algorithm, RSA first
/// (verifiers that look at one signature look at the first, and every one knows RSA).
pub fn signing_subset(keys: Vec<DkimKeyRecord>) -> Vec<DkimKeyRecord> {
    let mut signing: Vec<DkimKeyRecord> = Vec::new();
    for key in keys {
        if !signing.iter().any(|k| k.algorithm == key.algorithm) {
            signing.push(key);
        }
    }
    signing.sort_by_key(|k| k.algorithm != "rsa");
    signing
}

/// Persistence of DKIM keys.
#[async_trait::async_trait]
pub trait DkimKeyStore: Send + Sync + 'static {
    /// Adds a DKIM key to its domain; it becomes the signing key of its algorithm. A
    /// selector already used by the domain is a [`StoreError::AlreadyExists`].
    async fn put_dkim_key(&self, key: &DkimKeyRecord) -> Result<(), StoreError>;
    /// A domain's signing keys: its newest of each algorithm (RSA and Ed25519 sign side by
    /// side, RFC 8463 §4), RSA first.
    async fn signing_keys(&self, domain: &str) -> Result<Vec<DkimKeyRecord>, StoreError>;
    /// All keys of a domain, newest first.
    async fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKeyRecord>, StoreError>;
    /// Removes one key; [`StoreError::NotFound`] if the domain has no such selector.
    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> Result<(), StoreError>;
}
