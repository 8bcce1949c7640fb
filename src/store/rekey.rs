//! `mairust key rotate`: re-encrypts everything under a new master key (or encrypts an
//! installation that had none). Refused while a server runs.
//!
//! For each message body: decrypt with the old key (or take it as is if it predates
//! encryption), store it sealed under the new key at its new address, point the database at
//! the new address, then delete the old blob. DKIM private keys are re-sealed, and the key check
//! value is replaced last. An interrupted run is run again with the same keys: bodies already
//! under the new key are recognised and skipped.
//!
//! Running servers hold a [`DatabaseLock`] in shared mode and the rotation takes it
//! exclusively, so a rotation never runs next to a server, nor a server next to a rotation.

use std::sync::Arc;

use anyhow::Context;
use sqlx::Row;

use super::crypto::Cipher;
use super::{BlobStore, MetadataStore, SqlStore};

/// PostgreSQL advisory lock key: held shared by every running server, exclusively by
/// `key rotate`.
const SERVER_LOCK: i64 = 0x6d61_6972_7573_0002;

/// How a process holds the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// A server: any number at once, but not during a rotation.
    Shared,
    /// `key rotate`: only with no server running.
    Exclusive,
}

/// Proof that this process holds the database in some [`LockMode`], released on drop (and
/// by the operating system or PostgreSQL when the process dies, so a crash leaves no stale
/// lock). SQLite: `flock` on `<database file>.lock`; PostgreSQL: a session advisory lock.
#[derive(Debug)]
pub struct DatabaseLock {
    _held: Held,
}

// The fields are never read: holding them (and dropping them) is the point.
#[allow(dead_code)]
#[derive(Debug)]
enum Held {
    File(std::fs::File),
    /// A server's lock: a task keeps the session (and so the lock) alive and takes it again
    /// on a new connection if the database restarted.
    Session(crate::task::OwnedTask),
    /// The rotation's lock, held on this connection for the command's short life.
    Connection(sqlx::AnyConnection),
}

/// The file of a `sqlite:` URL.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| std::path::PathBuf::from(path))
}

fn busy(mode: LockMode) -> anyhow::Error {
    match mode {
        LockMode::Shared => anyhow::anyhow!(
            "`mairust key rotate` is running on this database; start the server when it has finished"
        ),
        LockMode::Exclusive => anyhow::anyhow!(
            "a MaiRust server is running on this database; stop every server using it, then run `key rotate` again"
        ),
    }
}

async fn try_session_lock(conn: &mut sqlx::AnyConnection, mode: LockMode) -> anyhow::Result<bool> {
    let sql = match mode {
        LockMode::Shared => "SELECT pg_try_advisory_lock_shared($1)",
        LockMode::Exclusive => "SELECT pg_try_advisory_lock($1)",
    };
    let got: bool = sqlx::query(sql)
        .bind(SERVER_LOCK)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    Ok(got)
}

impl DatabaseLock {
    /// Takes the lock on the database of `database` (already migrated) or fails at once
    /// with a message saying who holds it.
    pub async fn acquire(
        database: &crate::config::DatabaseConfig,
        mode: LockMode,
    ) -> anyhow::Result<Self> {
        use sqlx::Connection;
        if let Some(file) = sqlite_file(&database.url) {
            let mut name = file.into_os_string();
            name.push(".lock");
            let path = std::path::PathBuf::from(name);
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open the lock file {}", path.display()))?;
            let taken = match mode {
                LockMode::Shared => lock.try_lock_shared(),
                LockMode::Exclusive => lock.try_lock(),
            };
            return match taken {
                Ok(()) => Ok(Self {
                    _held: Held::File(lock),
                }),
                Err(std::fs::TryLockError::WouldBlock) => Err(busy(mode)),
                Err(std::fs::TryLockError::Error(e)) => {
                    Err(e).with_context(|| format!("cannot lock {}", path.display()))
                }
            };
        }
        let url = database.url.clone();
        let mut conn = sqlx::AnyConnection::connect(&url).await?;
        if !try_session_lock(&mut conn, mode).await? {
            return Err(busy(mode));
        }
        if mode == LockMode::Exclusive {
            return Ok(Self {
                _held: Held::Connection(conn),
            });
        }
        let task = crate::task::OwnedTask::spawn(async move {
            let mut conn = Some(conn);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let alive = match conn.as_mut() {
                    Some(c) => c.ping().await.is_ok(),
                    None => false,
                };
                if alive {
                    continue;
                }
                // The session (and its lock) is gone: take the lock again on a new one.
                conn = None;
                match sqlx::AnyConnection::connect(&url).await {
                    Ok(mut c) => match try_session_lock(&mut c, LockMode::Shared).await {
                        Ok(true) => conn = Some(c),
                        Ok(false) => tracing::error!(
                            "cannot take the database lock again: `mairust key rotate` is running"
                        ),
                        Err(error) => tracing::warn!(%error, "cannot take the database lock again"),
                    },
                    Err(error) => {
                        tracing::warn!(%error, "cannot reconnect to hold the database lock")
                    }
                }
            }
        });
        Ok(Self {
            _held: Held::Session(task),
        })
    }
}

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// Bodies re-encrypted.
    pub bodies: u64,
    /// Bodies already under the new key.
    pub already: u64,
    /// DKIM keys re-sealed.
    pub secrets: u64,
}

/// A stored body sealed under `new`, with its address under `new`; `None` if it is already.
fn reseal(
    key: &str,
    stored: Vec<u8>,
    old: Option<&Cipher>,
    new: &Cipher,
) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let plaintext = if Cipher::is_sealed_blob(&stored) {
        if new.open_blob(&stored).is_ok() {
            return Ok(None);
        }
        old.context("bodies are encrypted: give the current key in MAIRUST_MASTER_KEY")?
            .open_blob(&stored)
            .with_context(|| format!("cannot decrypt body {key} with the current key"))?
    } else {
        stored
    };
    Ok(Some((new.address(&plaintext), new.seal_blob(&plaintext))))
}

/// Re-encrypts bodies in their rows and in `blobs` (the raw backend), and secrets in `store`,
/// from `old` to `new`.
pub async fn rotate(
    store: &SqlStore,
    blobs: Arc<dyn BlobStore>,
    old: Option<&Cipher>,
    new: &Cipher,
) -> anyhow::Result<Rotated> {
    let mut done = Rotated::default();
    // Bodies kept in their rows: re-sealed and re-addressed in place, row by row.
    let rows = sqlx::query("SELECT id, blob_key, body FROM messages WHERE body IS NOT NULL")
        .fetch_all(store.pool())
        .await?;
    for row in rows {
        let id: String = row.try_get(0)?;
        let key: String = row.try_get(1)?;
        let stored: Vec<u8> = row.try_get(2)?;
        let Some((new_key, sealed)) = reseal(&key, stored, old, new)? else {
            done.already += 1;
            continue;
        };
        sqlx::query("UPDATE messages SET blob_key = $1, body = $2 WHERE id = $3")
            .bind(&new_key)
            .bind(sealed)
            .bind(&id)
            .execute(store.pool())
            .await?;
        done.bodies += 1;
    }
    for key in super::blob_migrate::referenced_keys(store).await? {
        let stored = blobs
            .get(&key)
            .await
            .with_context(|| format!("cannot read body {key}"))?;
        let Some((new_key, sealed)) = reseal(&key, stored, old, new)? else {
            done.already += 1;
            continue;
        };
        blobs.put(&new_key, &sealed).await?;
        sqlx::query("UPDATE messages SET blob_key = $1 WHERE blob_key = $2 AND body IS NULL")
            .bind(&new_key)
            .bind(&key)
            .execute(store.pool())
            .await?;
        if new_key != key {
            blobs.delete(&key).await?;
        }
        done.bodies += 1;
    }
    let rows = sqlx::query("SELECT domain, selector, private_key FROM dkim_keys")
        .fetch_all(store.pool())
        .await?;
    for row in rows {
        let domain: String = row.try_get(0)?;
        let selector: String = row.try_get(1)?;
        let private: String = row.try_get(2)?;
        let record = super::DkimKeyRecord {
            domain: domain.clone(),
            selector: selector.clone(),
            algorithm: String::new(),
            private_key: private,
            public_key: String::new(),
            created_at: 0,
        };
        // Done already only if sealed under the new key: a plain key reads with any cipher.
        if Cipher::is_sealed_secret(&record.private_key) && record.private_der(Some(new)).is_ok() {
            continue;
        }
        let der = record
            .private_der(old)
            .with_context(|| format!("cannot read the DKIM key of {domain}"))?;
        // A domain has one key per selector (rotation): each is re-sealed on its own.
        sqlx::query("UPDATE dkim_keys SET private_key = $1 WHERE domain = $2 AND selector = $3")
            .bind(super::DkimKeyRecord::encode_private(&der, Some(new)))
            .bind(&domain)
            .bind(&selector)
            .execute(store.pool())
            .await?;
        done.secrets += 1;
    }
    store
        .set_setting("security.key_check", new.check_value())
        .await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encrypted::EncryptedBlobStore;
    use crate::store::fs::FsBlobStore;
    use crate::store::{MailboxStore, WriteOp};

    #[tokio::test]
    async fn rotation_re_encrypts_and_is_resumable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::sql::test_sqlite(dir.path(), "r").await;
        let raw: Arc<dyn BlobStore> =
            Arc::new(FsBlobStore::open(&dir.path().join("b")).expect("fs"));
        let old = Cipher::from_master_key(&Cipher::generate_master_key()).expect("old");
        let encrypted = EncryptedBlobStore::new(raw.clone(), old.clone());
        let body = b"Subject: rotate me\r\n\r\nhi\r\n";
        let key = encrypted.key_for(body);
        encrypted.put(&key, body).await.expect("put");
        let mut accepted = crate::store::sql::tests::accepted("m1", &key);
        accepted.size = body.len() as i64;
        // A second body kept in its row, sealed under the old key.
        let small = b"Subject: in its row\r\n\r\nhi\r\n";
        let small_key = old.address(small);
        let mut inline = accepted.clone();
        inline.id = "m2".into();
        inline.blob_key = small_key.clone();
        inline.inline_body = Some(old.seal_blob(small).into());
        store
            .write_batch(
                &[WriteOp::Accept(accepted), WriteOp::Accept(inline)],
                &encrypted,
            )
            .await
            .expect("commit");

        let new = Cipher::from_master_key(&Cipher::generate_master_key()).expect("new");
        let done = rotate(&store, raw.clone(), Some(&old), &new)
            .await
            .expect("rotate");
        assert_eq!(done.bodies, 2);
        let new_key = new.address(body);
        let rows = crate::store::inline::InlineBodyStore::new(store.clone(), raw.clone());
        let reader = EncryptedBlobStore::new(Arc::new(rows), new.clone());
        assert_eq!(
            reader
                .get(&new.address(small))
                .await
                .expect("re-sealed in its row"),
            small
        );
        assert!(store.inline_body(&small_key).await.expect("read").is_none());
        assert_eq!(
            reader
                .get(&new_key)
                .await
                .expect("readable with the new key"),
            body
        );
        assert!(
            !raw.contains(&key).await.expect("contains"),
            "old blob deleted"
        );
        assert_eq!(
            store
                .setting("security.key_check")
                .await
                .expect("setting")
                .as_deref(),
            Some(new.check_value())
        );
        let again = rotate(&store, raw, Some(&old), &new).await.expect("rerun");
        assert_eq!((again.bodies, again.already), (0, 2));
    }

    #[tokio::test]
    async fn every_dkim_key_of_a_domain_keeps_its_own_private_key() {
        use crate::store::DkimKeyStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::sql::test_sqlite(dir.path(), "k").await;
        let raw: Arc<dyn BlobStore> =
            Arc::new(FsBlobStore::open(&dir.path().join("b")).expect("fs"));
        let alg = crate::dkim::Algorithm::Ed25519;
        let first = crate::dkim::generate("example.test", "s1", alg, None).expect("key");
        let mut second = crate::dkim::generate("example.test", "s2", alg, None).expect("key");
        second.created_at = first.created_at + 1;
        store.put_dkim_key(&first).await.expect("first");
        store.put_dkim_key(&second).await.expect("second");
        assert!(matches!(
            store.put_dkim_key(&first).await,
            Err(crate::store::StoreError::AlreadyExists(_))
        ));

        let new = Cipher::from_master_key(&Cipher::generate_master_key()).expect("new");
        let done = rotate(&store, raw.clone(), None, &new)
            .await
            .expect("rotate");
        assert_eq!(
            done.secrets, 2,
            "plain keys get sealed, each under its selector"
        );
        let again = rotate(&store, raw, None, &new).await.expect("rerun");
        assert_eq!(again.secrets, 0, "already sealed under the new key");
        let keys = store.dkim_keys("example.test").await.expect("keys");
        assert_eq!(
            keys.iter().map(|k| k.selector.as_str()).collect::<Vec<_>>(),
            ["s2", "s1"],
            "newest first"
        );
        for (stored, original) in keys.iter().zip([&second, &first]) {
            assert_eq!(
                stored.private_der(Some(&new)).expect("sealed"),
                original.private_der(None).expect("plain"),
                "{}",
                stored.selector
            );
        }
    }
}
