//! The metadata store over SQLite or PostgreSQL.
//!
//! Both databases run the same queries through sqlx's `Any` driver: every column is text or a
//! 64-bit integer (times in ms, flags as 0/1), placeholders are `$n`, and the few places
//! where the dialects differ go through [`Dialect`]. Each database keeps its own migrations.
//!
//! This module holds the connection, the dialect and the transactions that span tables (the
//! group commit, the purge); each table's SQL lives in its own submodule, which implements
//! that table's trait for [`SqlStore`].

mod accounts;
mod batch;
mod dkim_keys;
mod mailbox;
mod queue;
mod recent;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, Connection};
use sqlx::{AnyPool, Executor};

use super::blob::BlobStore;
use super::dkim_keys::DkimKeyRecord;
use super::{AcceptedMessage, MetadataStore, Millis, StoreError, WriteOp};
use crate::config::DatabaseConfig;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which SQL database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite in WAL mode.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// The dialect of a `database.url`.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// SQL for "now" in ms since the epoch, from the database's clock: lease times must not
    /// depend on the clocks of the nodes.
    pub(crate) fn now_ms(self) -> &'static str {
        match self {
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Self::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Row lock for a fencing check; SQLite's write lock is already exclusive.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }

    /// SQLite takes its write lock up front so that a transaction that reads before it
    /// writes cannot fail with SQLITE_BUSY half-way.
    pub(crate) fn begin(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }
}

/// Test hook (`server.fault_injection`): the next group commit of two or more messages writes
/// everything and then aborts the process instead of committing, which is a crash between a
/// batch's body writes and its commit.
static ABORT_BEFORE_NEXT_COMMIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Arms [`ABORT_BEFORE_NEXT_COMMIT`].
pub fn abort_before_next_commit() {
    ABORT_BEFORE_NEXT_COMMIT.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A transaction on either database.
pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Metadata in a SQL database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// Recent lookups of recipients without a quota: address → user id.
    recipients: Arc<recent::Recent<i64>>,
    /// Recent lookups of DKIM signing keys: domain → its newest key, if any.
    signing_keys: Arc<recent::Recent<Vec<DkimKeyRecord>>>,
    /// SQLite only: the task that checkpoints the write-ahead log, stopped with the last clone.
    _wal_checkpointer: Option<Arc<crate::task::OwnedTask>>,
    /// Connections for the lease statements only: renewal must not queue behind the group
    /// commit, the API and the schedulers on the main pool, or a busy node would lose its
    /// leases while perfectly alive.
    lease_pool: AnyPool,
    /// Connections for taking over partitions, whose rows another (perhaps vanished) node may
    /// hold locked: apart, so such waits never take the renewals' connections.
    takeover_pool: AnyPool,
    dialect: Dialect,
}

/// How often SQLite's write-ahead log is copied into the database file, apart from the
/// commits: an automatic checkpoint runs inside the commit that crosses 1,000 pages and holds
/// up every message of its batch (with 2 KiB bodies in their rows, about every 1,500 messages).
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Checkpoints the write-ahead log of SQLite every [`WAL_CHECKPOINT_INTERVAL`], in `PASSIVE`
/// mode: it copies what no reader still needs and never waits for, or blocks, a writer.
async fn checkpoint_wal(pool: AnyPool) {
    let mut tick = tokio::time::interval(WAL_CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(%error, "SQLite WAL checkpoint failed; retrying");
        }
    }
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a statement waits for a connection of the main pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of the lease pool: renewal and an acquisition may overlap, nothing more.
const LEASE_CONNECTIONS: u32 = 2;
/// A lease statement that cannot get a connection soon is better failed: the manager
/// retries at its next tick, well within the lease's lifetime.
const LEASE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// A takeover waits this long at most for a row lock: hardly at all. A node that died in the
/// middle of a transaction leaves its locks on its lease rows until the server ends its
/// session; an attempt to take such a partition counts as held and is retried a little later,
/// so that it holds up neither the queue manager (its renewals) nor the other partitions'
/// takeovers. A live holder's own locks last milliseconds, and its lease is valid anyway.
const TAKEOVER_LOCK_TIMEOUT: Duration = Duration::from_millis(20);
/// How often the server checks, while a statement runs or waits for a lock, that the client
/// is still connected (PostgreSQL 14 and later): the backend of a killed node that was
/// waiting for a lock would otherwise keep its own locks until that wait ends.
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The server ends a session idle this long inside a transaction, releasing its locks: the
/// session of a node that vanished mid-transaction (killed, or cut off by the network, which
/// TCP would notice only after hours). No transaction of ours waits that long between two
/// statements: the longest gap is the commit's check of new bodies in the blob store.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Pool options for either pool: the per-connection settings of the dialect.
fn pool_options(
    dialect: Dialect,
    config: &DatabaseConfig,
    max_connections: u32,
    acquire_timeout: Duration,
    lock_timeout: Option<Duration>,
) -> AnyPoolOptions {
    let mut pool = AnyPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(acquire_timeout)
        // Recycle connections so a database failover or restart is picked up.
        .idle_timeout(Duration::from_secs(600))
        .max_lifetime(Duration::from_secs(1800));
    if dialect == Dialect::Postgres {
        // A hung or locked database fails the statement instead of holding the session (and
        // the storage writer) forever.
        let mut settings = format!(
            "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
            config.statement_timeout.as_millis().max(1),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        if let Some(lock_timeout) = lock_timeout {
            settings.push_str(&format!(
                "; SET lock_timeout = {}",
                lock_timeout.as_millis()
            ));
        }
        pool = pool.after_connect(move |conn, _meta| {
            let settings = settings.clone();
            Box::pin(async move {
                conn.execute(settings.as_str()).await?;
                // Unknown before PostgreSQL 14, where a dead client is noticed only when its
                // statement ends: optional.
                if let Err(error) = conn
                    .execute(
                        format!(
                            "SET client_connection_check_interval = {}",
                            CLIENT_CHECK_INTERVAL.as_millis()
                        )
                        .as_str(),
                    )
                    .await
                {
                    tracing::debug!(%error, "client_connection_check_interval not set");
                }
                Ok(())
            })
        });
    }
    if dialect == Dialect::Sqlite {
        pool = pool.after_connect(|conn, _meta| {
            Box::pin(async move {
                // FULL: a commit is on disk when it returns, which the 250 promise needs.
                // No automatic checkpoints: `checkpoint_wal` runs them beside the commits.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                     PRAGMA wal_autocheckpoint = 0;",
                )
                .await?;
                Ok(())
            })
        });
    }
    pool
}

impl SqlStore {
    /// Connects, creating the SQLite file and its directory if needed, and migrates.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(&config.url).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "database.url `{}` must start with sqlite:// or postgres://",
                config.url
            ))
        })?;
        let mut url = config.url.clone();
        if dialect == Dialect::Sqlite {
            url = prepare_sqlite_url(&url)?;
        }
        let options = AnyConnectOptions::from_str(&url)?;
        // One direct connection first: it fails at once with the real cause (refused, bad
        // password, unknown database) where the pool would wait out its acquire timeout and
        // report only that.
        // On PostgreSQL it also runs the migrations, outside the pool's statement timeout (an
        // index build on a large table may take longer than any request should).
        match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect_with(&options)).await {
            Ok(Ok(mut conn)) => {
                if dialect == Dialect::Postgres {
                    POSTGRES_MIGRATIONS.run(&mut conn).await?;
                }
                conn.close().await?
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no answer from the database within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
        let pool = pool_options(
            dialect,
            config,
            config.max_connections,
            ACQUIRE_TIMEOUT,
            None,
        )
        .connect_with(options.clone())
        .await?;
        if dialect == Dialect::Sqlite {
            SQLITE_MIGRATIONS.run(&pool).await?;
        }
        // Connects lazily: the first lease statement opens its connection, and a broken one
        // is replaced by the pool on the next use.
        let lease_pool = pool_options(
            dialect,
            config,
            LEASE_CONNECTIONS,
            LEASE_ACQUIRE_TIMEOUT,
            None,
        )
        .connect_lazy_with(options.clone());
        let takeover_pool = pool_options(
            dialect,
            config,
            LEASE_CONNECTIONS,
            LEASE_ACQUIRE_TIMEOUT,
            Some(TAKEOVER_LOCK_TIMEOUT),
        )
        .connect_lazy_with(options);
        let wal_checkpointer = (dialect == Dialect::Sqlite)
            .then(|| Arc::new(crate::task::OwnedTask::spawn(checkpoint_wal(pool.clone()))));
        Ok(Self {
            pool,
            _wal_checkpointer: wal_checkpointer,
            recipients: Arc::default(),
            signing_keys: Arc::default(),
            lease_pool,
            takeover_pool,
            dialect,
        })
    }

    /// The dialect in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The underlying pool, for export and import.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool of the lease statements.
    pub(crate) fn lease_pool(&self) -> &AnyPool {
        &self.lease_pool
    }

    /// The pool of lease acquisitions, apart from the renewals'.
    pub(crate) fn takeover_pool(&self) -> &AnyPool {
        &self.takeover_pool
    }

    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin_with(self.dialect.begin()).await?)
    }

    /// [`MailboxStore::purge_finished`](crate::store::MailboxStore::purge_finished): finished queue rows and then the messages nothing
    /// refers to any more, in one transaction.
    pub(crate) async fn purge(&self, before: Millis) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        let ids = queue::delete_finished(&mut tx, before).await?;
        let keys = Self::delete_orphans(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(keys)
    }

    /// [`MailboxStore::write_batch`](crate::store::MailboxStore::write_batch): one transaction over the messages and the queue
    /// tables, each op in its own savepoint.
    pub(crate) async fn commit_batch(
        &self,
        ops: &[WriteOp],
        blobs: &dyn BlobStore,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let dialect = self.dialect();
        let mut tx = self.begin().await?;
        // Bodies in the blob store are checked; inline ones are written by this transaction.
        let keys: HashSet<&str> = ops
            .iter()
            .flat_map(WriteOp::new_messages)
            .filter(|m| m.inline_body.is_none())
            .map(|m| m.blob_key.as_str())
            .collect();
        let mut missing = HashSet::new();
        if !keys.is_empty() {
            // Excludes `delete_unreferenced_blobs` (SHARE mode) until this commit, so a body
            // seen here cannot be deleted before its reference is visible. SQLite's
            // `BEGIN IMMEDIATE` already holds the database's only write lock.
            if dialect == Dialect::Postgres {
                sqlx::query("LOCK TABLE messages IN ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let checks = futures::future::join_all(keys.iter().map(|&key| async move {
                match blobs.contains(key).await {
                    Ok(true) => None,
                    Ok(false) => Some(key),
                    Err(error) => {
                        tracing::warn!(%key, %error, "cannot check a message body before its commit");
                        Some(key)
                    }
                }
            }))
            .await;
            missing.extend(checks.into_iter().flatten());
        }
        let mut results: Vec<Option<Result<(), StoreError>>> = ops
            .iter()
            .map(|op| {
                op.new_messages()
                    .find(|m| m.inline_body.is_none() && missing.contains(m.blob_key.as_str()))
                    .map(|m| Err(StoreError::BlobMissing(m.blob_key.clone())))
            })
            .collect();
        // The accepted messages together first, in a few statements: the common batch.
        let accepted: Vec<(usize, &AcceptedMessage)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                WriteOp::Accept(m) if results[i].is_none() => Some((i, m)),
                _ => None,
            })
            .collect();
        if accepted.len() > 1 {
            let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
            let messages: Vec<&AcceptedMessage> = accepted.iter().map(|&(_, m)| m).collect();
            match mailbox::insert_accepted(&mut savepoint, &messages).await {
                Ok(()) => {
                    savepoint.commit().await?;
                    for &(i, _) in &accepted {
                        results[i] = Some(Ok(()));
                    }
                }
                // One of them fails (its user was just deleted): each on its own below.
                Err(_) => savepoint.rollback().await?,
            }
        }
        for (op, result) in ops.iter().zip(results.iter_mut()) {
            if result.is_some() {
                continue;
            }
            // Each op in its own savepoint: one failing op (a lost lease) leaves the others.
            let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
            let outcome = match op {
                WriteOp::Accept(m) => mailbox::insert_accepted(&mut savepoint, &[m]).await,
                WriteOp::Apply {
                    lease,
                    updates,
                    new_messages,
                } => {
                    queue::apply_fenced(&mut savepoint, dialect, lease, updates, new_messages).await
                }
            };
            match outcome {
                Ok(()) => savepoint.commit().await?,
                Err(_) => savepoint.rollback().await?,
            }
            *result = Some(outcome);
        }
        if ops.iter().flat_map(WriteOp::new_messages).nth(1).is_some()
            && ABORT_BEFORE_NEXT_COMMIT.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::error!(
                ops = ops.len(),
                "fault injection: aborting before the commit"
            );
            std::process::abort();
        }
        tx.commit().await?;
        // Every op got its outcome above; a gap would hand replies to the wrong callers.
        Ok(results
            .into_iter()
            .map(|r| r.expect("every op has its outcome"))
            .collect())
    }
}

/// The file a `sqlite:` URL names; `None` for another scheme, no path or `:memory:`.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Adds `mode=rwc` (create if missing) and creates the file's directory.
fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let path = sqlite_path(url).ok_or_else(|| {
        StoreError::Unavailable(format!(
            "database.url `{url}` names no SQLite file; write sqlite:///absolute/path.db or sqlite://./relative.db"
        ))
    })?;
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create database directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    // New files are private (the process umask); existing ones left readable are fixed.
    for suffix in ["", "-wal", "-shm"] {
        crate::private::tighten(std::path::Path::new(&format!("{path}{suffix}")))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    }
    Ok(if rest.contains("mode=") {
        url.to_string()
    } else if rest.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// A migrated SQLite store in `dir/<name>.db`, for tests.
#[async_trait::async_trait]
impl MetadataStore for SqlStore {
    async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        use sqlx::Row;
        Ok(sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) async fn test_sqlite(dir: &std::path::Path, name: &str) -> SqlStore {
    SqlStore::connect(&DatabaseConfig {
        url: format!("sqlite://{}/{name}.db", dir.display()),
        ..DatabaseConfig::default()
    })
    .await
    .expect("connect")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::fs::FsBlobStore;
    use crate::store::{AcceptedMessage, LocalDelivery, MailboxStore, MessageSummary, now_millis};

    /// A dump from one dialect must import into the other: both keep the same versions.
    #[test]
    fn both_dialects_have_the_same_migration_versions() {
        let versions = |m: &sqlx::migrate::Migrator| -> Vec<i64> {
            m.iter().map(|migration| migration.version).collect()
        };
        assert_eq!(versions(&SQLITE_MIGRATIONS), versions(&POSTGRES_MIGRATIONS));
    }

    /// A message with no recipients whose body is `key` in the blob store.
    pub(crate) fn accepted(id: &str, key: &str) -> AcceptedMessage {
        AcceptedMessage {
            id: id.into(),
            blob_key: key.into(),
            inline_body: None,
            size: 4,
            received_at: now_millis(),
            envelope_from: String::new(),
            summary: MessageSummary::default(),
            deliveries: vec![],
            remote_recipients: vec![],
            expires_at: now_millis(),
        }
    }

    /// A batch larger than one multi-row statement, with mailbox entries for two users, Sent
    /// copies and queue rows, and one message to a user who no longer exists: that one fails
    /// alone and everything else is committed, counted once in each user's mailbox size.
    #[tokio::test]
    async fn a_large_batch_commits_in_few_statements_and_fails_only_its_bad_message() {
        use crate::store::{AccountStore, MailboxStore, RemoteRecipient};
        use sqlx::Row;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_sqlite(dir.path(), "m").await;
        let blobs = FsBlobStore::open(&dir.path().join("blobs")).expect("fs");
        store.add_domain("example.org").await.expect("domain");
        let alice = store
            .add_user("alice@example.org", "x", false, None)
            .await
            .expect("alice");
        let bob = store
            .add_user("bob@example.org", "x", false, None)
            .await
            .expect("bob");
        const BAD: usize = 150;
        let ops: Vec<WriteOp> = (0..300)
            .map(|i| {
                let mut m = accepted(&format!("m{i}"), &format!("k{i}"));
                m.inline_body = Some(bytes::Bytes::from(format!("body {i}\r\n")));
                m.size = 10 + i as i64;
                m.deliveries = vec![LocalDelivery::inbox(if i == BAD {
                    99_999
                } else {
                    alice.id
                })];
                if i % 3 == 0 {
                    m.deliveries.push(LocalDelivery::sent_copy(bob.id));
                }
                if i % 2 == 0 {
                    m.remote_recipients = vec![RemoteRecipient {
                        recipient: format!("r{i}@remote.test"),
                        domain: "remote.test".into(),
                        partition: 3,
                    }];
                }
                WriteOp::Accept(m)
            })
            .collect();
        let results = store.write_batch(&ops, &blobs).await.expect("batch");
        assert_eq!(results.len(), 300);
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), i != BAD, "message {i}: {result:?}");
        }
        assert_eq!(store.count_messages().await.expect("count"), 299);

        let count = |sql: String, bound: i64| {
            let pool = store.pool().clone();
            async move {
                let row = sqlx::query(&sql).bind(bound).fetch_one(&pool).await;
                row.expect("count").try_get::<i64, _>(0).expect("i64")
            }
        };
        let in_folder = |folder: &str| {
            format!(
                "SELECT COUNT(*) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id \
                 WHERE e.user_id = $1 AND f.name = '{folder}'"
            )
        };
        assert_eq!(count(in_folder("INBOX"), alice.id).await, 299);
        assert_eq!(
            count(in_folder("Sent"), bob.id).await,
            99,
            "i % 3 == 0 except {BAD}"
        );
        let queued = "SELECT COUNT(*) FROM queue WHERE partition = $1 AND status = 'queued'";
        assert_eq!(count(queued.into(), 3).await, 149, "even i except {BAD}");

        let sizes = |keep: fn(usize) -> bool| {
            (0..300)
                .filter(|&i| i != BAD && keep(i))
                .map(|i| 10 + i as i64)
                .sum::<i64>()
        };
        let users = store.list_users().await.expect("users");
        let used = |id: i64| users.iter().find(|u| u.id == id).expect("user").used_bytes;
        assert_eq!(used(alice.id), sizes(|_| true));
        assert_eq!(used(bob.id), sizes(|i| i % 3 == 0));
    }

    /// Committed pages reach the database file without a commit running the checkpoint (and
    /// long before SQLite's own threshold of 1,000 pages would).
    #[tokio::test]
    async fn the_write_ahead_log_is_checkpointed_beside_the_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_sqlite(dir.path(), "m").await;
        let blobs = FsBlobStore::open(&dir.path().join("blobs")).expect("fs");
        let db = dir.path().join("m.db");
        let before = std::fs::metadata(&db).expect("db file").len();
        let ops: Vec<WriteOp> = (0..100)
            .map(|i| {
                let mut m = accepted(&format!("m{i}"), &format!("k{i}"));
                m.inline_body = Some(bytes::Bytes::from(vec![b'x'; 4096]));
                WriteOp::Accept(m)
            })
            .collect();
        store.write_batch(&ops, &blobs).await.expect("batch");
        let deadline = std::time::Instant::now() + 10 * WAL_CHECKPOINT_INTERVAL;
        while std::fs::metadata(&db).expect("db file").len() < before + 100 * 4096 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file did not grow: nothing checkpointed"
            );
            tokio::time::sleep(WAL_CHECKPOINT_INTERVAL / 5).await;
        }
    }

    /// A lookup remembered by one node while another deletes the user: the message is not
    /// committed to a mailbox that no longer exists (the writer answers an error, the client
    /// retries); on the node that deleted it, the next lookup already says so.
    #[tokio::test]
    async fn a_remembered_recipient_deleted_elsewhere_fails_its_commit() {
        use crate::store::{AccountStore, MailboxStore, RecipientLookup};
        let dir = tempfile::tempdir().expect("tempdir");
        let here = test_sqlite(dir.path(), "m").await;
        let there = test_sqlite(dir.path(), "m").await;
        let blobs = FsBlobStore::open(&dir.path().join("blobs")).expect("fs");
        here.add_domain("example.org").await.expect("domain");
        let alice = here
            .add_user("alice@example.org", "x", false, None)
            .await
            .expect("alice");
        let local = RecipientLookup::Local {
            user_id: alice.id,
            over_quota: false,
        };
        for store in [&here, &there] {
            let found = store.lookup_recipient("Alice@example.org").await;
            assert_eq!(found.expect("lookup"), local);
        }
        there
            .delete_user("alice@example.org")
            .await
            .expect("delete");
        let gone = there.lookup_recipient("alice@example.org").await;
        assert_eq!(gone.expect("lookup"), RecipientLookup::UnknownUser);
        let stale = here.lookup_recipient("alice@example.org").await;
        assert_eq!(stale.expect("lookup"), local, "remembered for a moment");
        let mut m = accepted("m1", "k1");
        m.inline_body = Some(bytes::Bytes::from_static(b"body\r\n"));
        m.deliveries = vec![LocalDelivery::inbox(alice.id)];
        let results = here
            .write_batch(&[WriteOp::Accept(m)], &blobs)
            .await
            .expect("batch");
        assert!(results[0].is_err(), "{results:?}");
        assert_eq!(here.count_messages().await.expect("count"), 0);
    }

    #[tokio::test]
    async fn signing_keys_are_remembered_briefly_and_changes_here_are_seen_at_once() {
        use crate::store::AccountStore;
        use crate::store::dkim_keys::DkimKeyStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let here = test_sqlite(dir.path(), "m").await;
        let there = test_sqlite(dir.path(), "m").await;
        here.add_domain("example.org").await.expect("domain");
        let key = |selector: &str, algorithm: &str, created_at| DkimKeyRecord {
            domain: "example.org".into(),
            selector: selector.into(),
            algorithm: algorithm.into(),
            private_key: "plain:AAAA".into(),
            public_key: "BBBB".into(),
            created_at,
        };
        let selectors =
            |keys: Vec<DkimKeyRecord>| keys.into_iter().map(|k| k.selector).collect::<Vec<_>>();
        let signing = |store: &SqlStore| {
            let store = store.clone();
            async move { selectors(store.signing_keys("Example.ORG").await.expect("keys")) }
        };
        assert!(signing(&here).await.is_empty());
        here.put_dkim_key(&key("s1", "ed25519", 1))
            .await
            .expect("s1");
        assert_eq!(
            signing(&here).await,
            ["s1"],
            "a key added here signs at once"
        );
        here.put_dkim_key(&key("r1", "rsa", 2)).await.expect("r1");
        assert_eq!(
            signing(&here).await,
            ["r1", "s1"],
            "one key of each algorithm signs"
        );
        there
            .put_dkim_key(&key("s2", "ed25519", 3))
            .await
            .expect("s2");
        assert_eq!(
            signing(&here).await,
            ["r1", "s1"],
            "another node's key is seen only once the memory expires"
        );
        tokio::time::sleep(recent::TTL + Duration::from_millis(100)).await;
        assert_eq!(
            signing(&here).await,
            ["r1", "s2"],
            "the newest Ed25519 key replaces s1"
        );
        here.delete_dkim_key("example.org", "s2")
            .await
            .expect("delete");
        assert_eq!(signing(&here).await, ["r1", "s1"]);
    }

    /// The purge decided a body was unreferenced; the same body was then stored again (the
    /// put found it present) and its message committed. Whatever the order, no committed
    /// message may end up pointing at a deleted body.
    #[tokio::test]
    async fn a_body_stored_again_is_never_lost_to_a_concurrent_purge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_sqlite(dir.path(), "m").await;
        let blobs = FsBlobStore::open(&dir.path().join("blobs")).expect("fs");
        let body = b"same body\r\n";
        let key = blobs.key_for(body);
        blobs.put(&key, body).await.expect("put");

        // The purge deletes between the put and the commit: the commit must fail, not
        // reference nothing.
        assert_eq!(
            store
                .delete_unreferenced_blobs(std::slice::from_ref(&key), &blobs)
                .await
                .expect("delete"),
            1
        );
        let results = store
            .write_batch(&[WriteOp::Accept(accepted("m1", &key))], &blobs)
            .await
            .expect("batch");
        assert!(
            matches!(&results[0], Err(StoreError::BlobMissing(k)) if *k == key),
            "{results:?}"
        );
        assert_eq!(store.count_messages().await.expect("count"), 0);

        // Stored again and committed first: the purge must now keep it.
        blobs.put(&key, body).await.expect("put again");
        let results = store
            .write_batch(&[WriteOp::Accept(accepted("m1", &key))], &blobs)
            .await
            .expect("batch");
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(
            store
                .delete_unreferenced_blobs(std::slice::from_ref(&key), &blobs)
                .await
                .expect("delete"),
            0
        );
        assert_eq!(blobs.get(&key).await.expect("still there"), body);
    }
}
