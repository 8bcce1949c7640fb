//! `mairust storage migrate --from fs --to s3` (and back): copies every message body the
//! database refers to from one blob backend to the other (bodies kept in their message rows
//! stay where they are).
//!
//! Each body is read from the source, checked against its key (the key is the body's content
//! address, so a corrupted copy cannot pass), written to the target, read back and checked
//! again. Bodies already present and intact in the target are skipped, so an interrupted run is
//! simply run again. Blobs are copied as stored: encrypted bodies stay encrypted and are checked
//! by decrypting them with the master key.

use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::BlobStore;
use super::crypto::Cipher;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bodies copied.
    pub copied: u64,
    /// Bodies already in the target.
    pub skipped: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Keys that failed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Checks that `stored` is the body `key` names.
fn verify(key: &str, stored: &[u8], cipher: Option<&Cipher>) -> Result<(), String> {
    let plain_key = super::blob_key(stored);
    if plain_key == key {
        return Ok(());
    }
    match cipher {
        Some(c) if Cipher::is_sealed_blob(stored) => {
            let plaintext = c.open_blob(stored).map_err(|e| e.to_string())?;
            if c.address(&plaintext) == key {
                Ok(())
            } else {
                Err("decrypted content does not match its key".into())
            }
        }
        None if Cipher::is_sealed_blob(stored) => {
            Err("the body is encrypted: set MAIRUST_MASTER_KEY to verify it".into())
        }
        _ => Err("content does not match its key (corrupted?)".into()),
    }
}

async fn copy_one(
    key: &str,
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    cipher: Option<&Cipher>,
) -> Result<Option<u64>, String> {
    if to.contains(key).await.map_err(|e| e.to_string())? {
        let there = to.get(key).await.map_err(|e| e.to_string())?;
        if verify(key, &there, cipher).is_ok() {
            return Ok(None);
        }
    }
    let data = from.get(key).await.map_err(|e| format!("read: {e}"))?;
    verify(key, &data, cipher).map_err(|e| format!("source: {e}"))?;
    to.put(key, &data)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let back = to.get(key).await.map_err(|e| format!("read back: {e}"))?;
    if back != data {
        return Err("the target returned different bytes".into());
    }
    Ok(Some(data.len() as u64))
}

/// Copies `keys` from `from` to `to` with `parallel` copies at a time.
pub async fn migrate(
    keys: Vec<String>,
    from: Arc<dyn BlobStore>,
    to: Arc<dyn BlobStore>,
    cipher: Option<Cipher>,
    parallel: usize,
    show_progress: bool,
) -> Summary {
    let bar = if show_progress {
        ProgressBar::new(keys.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} bodies {msg} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary::default();
    let mut copies = futures::stream::iter(keys)
        .map(|key| {
            let (from, to, cipher) = (from.clone(), to.clone(), cipher.clone());
            async move {
                let result = copy_one(&key, from.as_ref(), to.as_ref(), cipher.as_ref()).await;
                (key, result)
            }
        })
        .buffer_unordered(parallel.max(1));
    while let Some((key, result)) = copies.next().await {
        match result {
            Ok(Some(bytes)) => {
                summary.copied += 1;
                summary.bytes += bytes;
            }
            Ok(None) => summary.skipped += 1,
            Err(reason) => {
                tracing::warn!(%key, %reason, "body not migrated");
                summary.failed.push((key, reason));
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "{} copied, {} skipped, {} failed",
            summary.copied,
            summary.skipped,
            summary.failed.len()
        ));
    }
    bar.finish();
    summary
}

/// Every key of a body in the blob store (not in its message's row) the database refers to.
pub async fn referenced_keys(store: &super::SqlStore) -> anyhow::Result<Vec<String>> {
    use sqlx::Row;
    let rows =
        sqlx::query("SELECT DISTINCT blob_key FROM messages WHERE body IS NULL ORDER BY blob_key")
            .fetch_all(store.pool())
            .await
            .context("cannot list message bodies")?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob_key;
    use crate::store::fs::FsBlobStore;

    #[tokio::test]
    async fn copies_verifies_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(&dir.path().join("a")).expect("a"));
        let b: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(&dir.path().join("b")).expect("b"));
        let mut keys = Vec::new();
        for i in 0..10 {
            let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
            let key = blob_key(body.as_bytes());
            a.put(&key, body.as_bytes()).await.expect("put");
            keys.push(key);
        }
        // An interrupted earlier run copied the first three.
        for key in &keys[..3] {
            let data = a.get(key).await.expect("get");
            b.put(key, &data).await.expect("put");
        }
        let summary = migrate(keys.clone(), a.clone(), b.clone(), None, 4, false).await;
        assert_eq!((summary.copied, summary.skipped), (7, 3));
        assert!(summary.failed.is_empty());
        for key in &keys {
            assert_eq!(
                b.get(key).await.expect("copied"),
                a.get(key).await.expect("source")
            );
        }
        let again = migrate(keys.clone(), a.clone(), b.clone(), None, 4, false).await;
        assert_eq!((again.copied, again.skipped), (0, 10));

        // A corrupted source body is reported, not copied.
        let bad = blob_key(b"original");
        a.put(&bad, b"tampered").await.expect("put");
        let summary = migrate(vec![bad.clone()], a, b.clone(), None, 1, false).await;
        assert_eq!(summary.failed.len(), 1);
        assert!(!b.contains(&bad).await.expect("contains"));
    }
}
