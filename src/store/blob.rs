//! The blob store: message bodies under content-addressed keys.

use sha2::{Digest, Sha256};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob under this key.
    #[error("blob {0} not found")]
    NotFound(String),
    /// The key is not one this store writes.
    #[error("invalid blob key `{0}`")]
    InvalidKey(String),
    /// The backend failed.
    #[error("blob store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A remote backend (S3) failed.
    #[error("blob store error: {0}")]
    Backend(String),
    /// The backend is misconfigured.
    #[error("blob store configuration: {0}")]
    Config(String),
    /// A blocking worker of the store panicked or was cancelled: a bug, not an I/O failure.
    #[error("blob store worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// Encryption at rest failed (usually a wrong master key).
    #[error(transparent)]
    Crypto(#[from] super::crypto::CryptoError),
}

/// Stores message bodies. `put` returns only once the body is durable.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The key a body is stored under (its content address).
    fn key_for(&self, data: &[u8]) -> String {
        blob_key(data)
    }
    /// Whether a blob exists under `key`.
    async fn contains(&self, key: &str) -> Result<bool, BlobError>;
    /// Writes `data` under `key` durably; writing an existing key is a no-op.
    async fn put(&self, key: &str, data: &[u8]) -> Result<(), BlobError>;
    /// Reads the blob under `key`.
    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError>;
    /// Reads the blobs under `keys`, each result in the place of its key; all at once, not
    /// one after the other. Stores that can read several in one request override it.
    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Vec<u8>, BlobError>> {
        futures::future::join_all(keys.iter().map(|key| self.get(key))).await
    }
    /// Removes the blob under `key`; a missing blob is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Answers only when the backend is usable (readable and writable).
    async fn health(&self) -> Result<(), BlobError>;
}

/// The content address of a body: its SHA-256 in hex, so one body serves every recipient.
pub fn blob_key(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Whether `key` has the shape [`blob_key`] produces (keeps keys out of path tricks).
pub fn is_valid_key(key: &str) -> bool {
    key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sha256_hex() {
        let key = blob_key(b"hello");
        assert_eq!(
            key,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(is_valid_key(&key));
        assert!(!is_valid_key("../etc/passwd"));
        assert!(!is_valid_key(&key.to_uppercase()));
    }
}
