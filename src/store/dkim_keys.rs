//! DKIM keys' persistence: each hosted domain's signing keys, newest first.
//!
//! A key never replaces another (mail signed with the old one must go on verifying while its
//! record is published), so a domain may hold several, one per selector.

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
    /// Private key in its storage encoding (see `crate::dkim`).
    pub private_key: String,
    /// Public key, base64, as published in DNS.
    pub public_key: String,
    /// Creation time.
    pub created_at: Millis,
}

/// Persistence of DKIM keys.
#[async_trait::async_trait]
pub trait DkimKeyStore: Send + Sync + 'static {
    /// Adds a DKIM key to its domain; it becomes the signing key. A selector already used
    /// by the domain is a [`StoreError::Conflict`].
    async fn put_dkim_key(&self, key: &DkimKeyRecord) -> Result<(), StoreError>;
    /// A domain's signing key: its newest.
    async fn dkim_key(&self, domain: &str) -> Result<Option<DkimKeyRecord>, StoreError>;
    /// All keys of a domain, newest (the signing key) first.
    async fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKeyRecord>, StoreError>;
    /// Removes one key; [`StoreError::NotFound`] if the domain has no such selector.
    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> Result<(), StoreError>;
}
