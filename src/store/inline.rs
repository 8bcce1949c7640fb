//! Bodies kept in their message's row.
//!
//! A body up to `storage.inline_max_bytes` is written by the group commit itself, in the
//! `body` column of its message row, so its durability costs nothing beyond the commit's one
//! fsync: no file to create, rename and sync per message, no S3 request. Larger bodies still
//! go to the blob backend before the commit. [`InlineBodyStore`] reads both: the row first,
//! then the backend. A row's body goes with the row, so deleting a key here only deletes the
//! backend's copy.

use std::sync::Arc;

use super::SqlStore;
use super::blob::{BlobError, BlobStore};

/// Reads bodies from their rows first and the blob backend second; writes go to the backend
/// (inline bodies are written by the commit of their message, not through this trait).
pub struct InlineBodyStore {
    rows: SqlStore,
    backend: Arc<dyn BlobStore>,
}

impl InlineBodyStore {
    /// Reads inline bodies from `rows` and every other body from `backend`.
    pub fn new(rows: SqlStore, backend: Arc<dyn BlobStore>) -> Self {
        Self { rows, backend }
    }
}

fn db_error(error: super::StoreError) -> BlobError {
    BlobError::Backend(format!(
        "cannot read a message body from the database: {error}"
    ))
}

#[async_trait::async_trait]
impl BlobStore for InlineBodyStore {
    fn key_for(&self, data: &[u8]) -> String {
        self.backend.key_for(data)
    }

    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        if self.rows.has_inline_body(key).await.map_err(db_error)? {
            return Ok(true);
        }
        self.backend.contains(key).await
    }

    async fn put(&self, key: &str, data: &[u8]) -> Result<(), BlobError> {
        self.backend.put(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        match self.rows.inline_body(key).await.map_err(db_error)? {
            Some(body) => Ok(body),
            None => self.backend.get(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.backend.delete(key).await
    }

    async fn health(&self) -> Result<(), BlobError> {
        self.backend.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::{Cipher, EncryptedBlobStore};
    use crate::store::fs::FsBlobStore;
    use crate::store::{MetadataStore, WriteOp};

    #[tokio::test]
    async fn an_inline_body_is_committed_read_sealed_and_deleted_with_its_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = crate::store::sql::test_sqlite(dir.path(), "i").await;
        let blob_dir = dir.path().join("blobs");
        let backend: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(&blob_dir).expect("fs"));
        let cipher = Cipher::from_master_key(&Cipher::generate_master_key()).expect("key");
        let stored = Arc::new(InlineBodyStore::new(rows.clone(), backend.clone()));
        let blobs = EncryptedBlobStore::new(stored.clone(), cipher.clone());
        rows.add_domain("example.test").await.expect("domain");
        let bob = rows
            .add_user("bob@example.test", "hash", false, None)
            .await
            .expect("user");

        let body = b"Subject: small\r\n\r\nkept in the row\r\n";
        let key = blobs.key_for(body);
        let mut message = crate::store::sql::tests::accepted("m1", &key);
        message.inline_body = Some(cipher.seal_blob(body).into());
        message.local_recipients = vec![bob.id];
        let results = rows
            .write_batch(&[WriteOp::Accept(message)], &blobs)
            .await
            .expect("commit");
        assert!(results[0].is_ok(), "{results:?}");

        assert_eq!(blobs.get(&key).await.expect("read"), body);
        assert!(blobs.contains(&key).await.expect("contains"));
        let row = stored.get(&key).await.expect("raw");
        assert!(Cipher::is_sealed_blob(&row), "sealed at rest in its row");
        assert!(!backend.contains(&key).await.expect("backend"));
        let files = walk(&blob_dir);
        assert!(files.is_empty(), "no file was written: {files:?}");

        let item = rows
            .list_mailbox(bob.id, "INBOX", 10, None)
            .await
            .expect("list")
            .items
            .remove(0);
        let freed = rows
            .delete_mailbox_item(bob.id, item.id)
            .await
            .expect("delete")
            .expect("was there");
        assert!(
            freed.is_empty(),
            "nothing to delete in the blob store: {freed:?}"
        );
        assert!(matches!(blobs.get(&key).await, Err(BlobError::NotFound(_))));
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
