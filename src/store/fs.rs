//! The filesystem blob store.
//!
//! A body is written to a temporary file, fsynced, renamed into place and the directory
//! fsynced, so after `put` returns the body survives a crash of the process or the machine.
//! Keys fan out over two directory levels (`ab/cd/abcd…`) to keep directories small; a fan-out
//! directory created on the way is made durable too (its parent is fsynced), or the first body
//! stored in it could vanish with the directory entry on power loss.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::blob::{BlobError, BlobStore, is_valid_key};

/// Bodies under a root directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating it if needed) the store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| {
            BlobError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create blob directory {}: {e}; check storage.options.path and its permissions",
                    root.display()
                ),
            ))
        })?;
        // The bodies beneath are readable only through a private root.
        crate::private::tighten(root).map_err(BlobError::Io)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        if !is_valid_key(key) {
            return Err(BlobError::InvalidKey(key.to_string()));
        }
        Ok(self.root.join(&key[0..2]).join(&key[2..4]).join(key))
    }

    fn put_sync(root: &Path, path: &Path, data: &[u8]) -> Result<(), BlobError> {
        if path.exists() {
            return Ok(());
        }
        let dir = path
            .parent()
            .ok_or_else(|| BlobError::InvalidKey(path.display().to_string()))?;
        create_dirs_durably(root, dir, sync_dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(root.join("tmp"))?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| BlobError::Io(e.error))?;
        sync_dir(dir)?;
        Ok(())
    }
}

/// Fsyncs a directory, which makes the entries created in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (below `root`, which exists) and every missing directory on the way, fsyncing
/// the parent of each one it creates so that the new entries survive a power loss.
fn create_dirs_durably(
    root: &Path,
    dir: &Path,
    sync: impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let Ok(relative) = dir.strip_prefix(root) else {
        return Err(std::io::Error::other(format!(
            "{} is outside the blob root {}",
            dir.display(),
            root.display()
        )));
    };
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        match std::fs::create_dir(&current) {
            Ok(()) => sync(&parent)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, data: &[u8]) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || Self::put_sync(&root, &path, &data)).await?
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(key.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        Ok(tokio::fs::try_exists(self.path_of(key)?).await?)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn health(&self) -> Result<(), BlobError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            let mut probe = tempfile::NamedTempFile::new_in(root.join("tmp"))?;
            probe.write_all(b"health")?;
            Ok(())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob_key;

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::open(dir.path()).expect("open");
        let body = b"Subject: hi\r\n\r\nbody\r\n";
        let key = blob_key(body);
        store.put(&key, body).await.expect("put");
        store.put(&key, body).await.expect("second put is a no-op");
        assert_eq!(store.get(&key).await.expect("get"), body);
        store.delete(&key).await.expect("delete");
        assert!(matches!(store.get(&key).await, Err(BlobError::NotFound(_))));
        store.delete(&key).await.expect("deleting twice is fine");
        store.health().await.expect("healthy");
    }

    #[test]
    fn new_fan_out_directories_are_made_durable_in_their_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let synced = std::cell::RefCell::new(Vec::new());
        let record = |p: &Path| {
            synced.borrow_mut().push(p.to_path_buf());
            Ok(())
        };
        create_dirs_durably(root, &root.join("ab").join("cd"), record).expect("create");
        assert_eq!(*synced.borrow(), vec![root.to_path_buf(), root.join("ab")]);
        // Existing directories are not synced again; a new sibling syncs only its parent.
        synced.borrow_mut().clear();
        create_dirs_durably(root, &root.join("ab").join("ef"), record).expect("create");
        assert_eq!(*synced.borrow(), vec![root.join("ab")]);
        assert!(create_dirs_durably(root, Path::new("/elsewhere"), record).is_err());
    }

    #[tokio::test]
    async fn rejects_keys_that_are_not_content_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::open(dir.path()).expect("open");
        assert!(matches!(
            store.get("../../etc/passwd").await,
            Err(BlobError::InvalidKey(_))
        ));
    }
}
