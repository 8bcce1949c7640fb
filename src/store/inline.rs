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

fn db_error_text(error: &super::StoreError) -> String {
    format!("cannot read a message body from the database: {error}")
}

fn db_error(error: super::StoreError) -> BlobError {
    BlobError::Backend(db_error_text(&error))
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

    /// The inline bodies among `keys` in one query; the others from the backend.
    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Vec<u8>, BlobError>> {
        let rows = match self.rows.inline_bodies(keys).await {
            Ok(rows) => rows,
            Err(error) => {
                let message = db_error_text(&error);
                return keys
                    .iter()
                    .map(|_| Err(BlobError::Backend(message.clone())))
                    .collect();
            }
        };
        let elsewhere: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|key| !rows.contains_key(*key))
            .collect();
        let mut from_backend = if elsewhere.is_empty() {
            Vec::new()
        } else {
            self.backend.get_many(&elsewhere).await
        }
        .into_iter();
        keys.iter()
            .map(|key| match rows.get(*key) {
                Some(body) => Ok(body.clone()),
                None => from_backend.next().unwrap_or_else(|| {
                    Err(BlobError::Backend(format!("no answer for body {key}")))
                }),
            })
            .collect()
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
    use crate::store::crypto::Cipher;
    use crate::store::encrypted::EncryptedBlobStore;
    use crate::store::fs::FsBlobStore;
    use crate::store::{AccountStore, MailboxStore, WriteOp};

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
        message.deliveries = vec![crate::store::LocalDelivery::inbox(bob.id)];
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

    /// Delivery reads a connection's bodies at once: those in rows in one query, the rest from
    /// the backend, each answer in the place of its key, a missing one failing alone.
    #[tokio::test]
    async fn many_bodies_come_back_in_key_order_from_rows_and_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = crate::store::sql::test_sqlite(dir.path(), "m").await;
        let backend: Arc<dyn BlobStore> =
            Arc::new(FsBlobStore::open(&dir.path().join("blobs")).expect("fs"));
        let cipher = Cipher::from_master_key(&Cipher::generate_master_key()).expect("key");
        let stored = Arc::new(InlineBodyStore::new(rows.clone(), backend));
        let blobs = EncryptedBlobStore::new(stored, cipher.clone());

        let small = b"Subject: small\r\n\r\nin the row\r\n".as_slice();
        let large = b"Subject: large\r\n\r\nin a file\r\n".as_slice();
        let small_key = blobs.key_for(small);
        let large_key = blobs.key_for(large);
        blobs.put(&large_key, large).await.expect("put");
        let mut inline = crate::store::sql::tests::accepted("m1", &small_key);
        inline.inline_body = Some(cipher.seal_blob(small).into());
        let in_file = crate::store::sql::tests::accepted("m2", &large_key);
        let results = rows
            .write_batch(&[WriteOp::Accept(inline), WriteOp::Accept(in_file)], &blobs)
            .await
            .expect("commit");
        assert!(results.iter().all(Result::is_ok), "{results:?}");

        let missing = blobs.key_for(b"never stored");
        let keys = [
            large_key.as_str(),
            missing.as_str(),
            small_key.as_str(),
            large_key.as_str(),
        ];
        let got = blobs.get_many(&keys).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].as_deref().expect("large"), large);
        assert!(
            matches!(got[1], Err(BlobError::NotFound(_))),
            "{:?}",
            got[1]
        );
        assert_eq!(got[2].as_deref().expect("small"), small);
        assert_eq!(got[3].as_deref().expect("large again"), large);
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
