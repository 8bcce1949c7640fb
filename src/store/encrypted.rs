//! A blob store that encrypts what it stores, over any other ([`Cipher`] does the sealing).

use std::sync::Arc;

use super::blob::{BlobError, BlobStore};
use super::crypto::Cipher;

/// A blob store that encrypts bodies before they reach `inner` and addresses them with a
/// keyed hash. Blobs written before encryption was enabled stay readable.
pub struct EncryptedBlobStore {
    inner: Arc<dyn BlobStore>,
    cipher: Cipher,
}

impl EncryptedBlobStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlobStore>, cipher: Cipher) -> Self {
        Self { inner, cipher }
    }

    /// A stored blob as it was written: opened if sealed, as is if it predates encryption.
    fn open(&self, stored: Vec<u8>) -> Result<Vec<u8>, BlobError> {
        if Cipher::is_sealed_blob(&stored) {
            Ok(self.cipher.open_blob(&stored)?)
        } else {
            Ok(stored)
        }
    }
}

#[async_trait::async_trait]
impl BlobStore for EncryptedBlobStore {
    fn key_for(&self, data: &[u8]) -> String {
        self.cipher.address(data)
    }

    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.contains(key).await
    }

    async fn put(&self, key: &str, data: &[u8]) -> Result<(), BlobError> {
        let sealed = self.cipher.seal_blob(data);
        self.inner.put(key, &sealed).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let stored = self.inner.get(key).await?;
        self.open(stored)
    }

    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Vec<u8>, BlobError>> {
        let stored = self.inner.get_many(keys).await;
        stored.into_iter().map(|s| self.open(s?)).collect()
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.inner.delete(key).await
    }

    async fn health(&self) -> Result<(), BlobError> {
        self.inner.health().await
    }
}
