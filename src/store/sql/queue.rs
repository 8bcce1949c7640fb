//! The delivery queue's SQL: queue rows, partition leases and the fenced writes of their
//! owners.

use std::time::Duration;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::mailbox::insert_accepted;
use super::{Dialect, SqlStore, Tx, batch};
use crate::store::queue::{
    ATTEMPT_DETAIL_MAX, Activity, Attempt, AttemptRecord, EntryUpdate, Lease, LeaseGrant,
    LeaseInfo, QueueEntry, QueueFilter, QueueStatus, QueueStore, TraceMessage,
};
use crate::store::{AcceptedMessage, Millis, Page, StoreError, now_millis};

const ENTRY_COLUMNS: &str = "q.id, q.message_id, q.sender, q.recipient, q.domain, q.partition, \
     q.status, q.attempts, q.next_attempt_at, q.last_error, q.created_at, q.expires_at, \
     q.updated_at, l.owner, m.blob_key, m.size, m.received_at";
const ENTRY_FROM: &str = "queue q JOIN messages m ON m.id = q.message_id \
     LEFT JOIN partition_leases l ON l.partition = q.partition";

fn entry_from_row(row: &AnyRow) -> Result<QueueEntry, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(QueueEntry {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        sender: row.try_get("sender")?,
        recipient: row.try_get("recipient")?,
        domain: row.try_get("domain")?,
        partition: row.try_get::<i64, _>("partition")? as u32,
        status: QueueStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown queue status `{status}`").into())
        })?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        updated_at: row.try_get("updated_at")?,
        owner: row.try_get("owner")?,
        blob_key: row.try_get("blob_key")?,
        size: row.try_get("size")?,
        received_at: row.try_get("received_at")?,
    })
}

fn lease_from_row(row: &AnyRow, owner: &str) -> Result<Lease, sqlx::Error> {
    Ok(Lease {
        partition: row.try_get::<i64, _>(0)? as u32,
        owner: owner.to_string(),
        epoch: row.try_get(1)?,
    })
}

/// Applies an owner's changes if its lease is still valid: the lease row is checked (and
/// locked on PostgreSQL) inside the caller's transaction, so a takeover cannot interleave.
/// The UPDATE repeats the lease condition for every row and must change all of them, so no
/// write slips through even where the up-front check would not lock (a row of another partition,
/// a lock the database did not take): any miss fails the whole op with `LeaseLost` and the
/// caller rolls it back. A pending row never disappears under its owner (the purge deletes
/// finished rows only, and rows in flight are never cancelled), so a miss means the lease.
pub(crate) async fn apply_fenced(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    lease: &Lease,
    updates: &[EntryUpdate],
    new_messages: &[AcceptedMessage],
) -> Result<(), StoreError> {
    let lost = || StoreError::LeaseLost {
        partition: lease.partition,
    };
    let valid = sqlx::query(&format!(
        "SELECT epoch FROM partition_leases WHERE partition = $1 AND owner = $2 \
         AND epoch = $3 AND lease_until > {}{}",
        dialect.now_ms(),
        dialect.for_update()
    ))
    .bind(i64::from(lease.partition))
    .bind(&lease.owner)
    .bind(lease.epoch)
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if !valid {
        return Err(lost());
    }
    let now = now_millis();
    let now_ms = dialect.now_ms();
    // v: (id, status, attempts, next_attempt_at, last_error, updated_at, epoch, partition,
    // owner), the lease's values repeated in every row.
    let statement = |rows: &str| {
        format!(
            "UPDATE queue SET status = v.column2, attempts = v.column3, \
             next_attempt_at = v.column4, last_error = v.column5, updated_at = v.column6, \
             epoch = v.column7, \
             delivered_at = CASE WHEN v.column2 = 'delivered' THEN v.column6 ELSE delivered_at END \
             FROM (VALUES {rows}) AS v \
             WHERE queue.id = v.column1 AND queue.partition = v.column8 \
             AND EXISTS (SELECT 1 FROM partition_leases l WHERE l.partition = v.column8 \
             AND l.owner = v.column9 AND l.epoch = v.column7 AND l.lease_until > {now_ms})"
        )
    };
    let changed = batch::execute(
        conn,
        statement,
        "($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        updates,
        |q, u| {
            q.bind(u.id)
                .bind(u.status.as_str())
                .bind(i64::from(u.attempts))
                .bind(u.next_attempt_at)
                .bind(&u.last_error)
                .bind(now)
                .bind(lease.epoch)
                .bind(i64::from(lease.partition))
                .bind(lease.owner.clone())
        },
    )
    .await?;
    // Every row must have changed (each update names a distinct row).
    if changed != updates.len() as u64 {
        return Err(lost());
    }
    // After the fenced UPDATE, in its transaction: an attempt is recorded only with the row
    // change it explains.
    let attempts: Vec<(i64, &Attempt)> = updates
        .iter()
        .filter_map(|u| u.attempt.as_ref().map(|a| (u.id, a)))
        .collect();
    batch::insert(
        conn,
        "delivery_attempts (queue_id, attempted_at, outcome, detail, node)",
        "($1, $2, $3, $4, $5)",
        &attempts,
        |q, &(id, attempt)| {
            q.bind(id)
                .bind(now)
                .bind(attempt.outcome)
                .bind(truncated(&attempt.detail, ATTEMPT_DETAIL_MAX))
                .bind(lease.owner.clone())
        },
    )
    .await?;
    let new_messages: Vec<&AcceptedMessage> = new_messages.iter().collect();
    insert_accepted(conn, &new_messages).await?;
    Ok(())
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Deletes finished rows last changed before `before`, inside the caller's transaction;
/// returns the ids of their messages, each once.
pub(crate) async fn delete_finished(
    tx: &mut Tx,
    before: Millis,
) -> Result<Vec<String>, StoreError> {
    // Their attempts first (they refer to the rows).
    sqlx::query(
        "DELETE FROM delivery_attempts WHERE queue_id IN (SELECT id FROM queue \
         WHERE status IN ('delivered', 'failed', 'cancelled') AND updated_at < $1)",
    )
    .bind(before)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query(
        "DELETE FROM queue WHERE status IN ('delivered', 'failed', 'cancelled') \
         AND updated_at < $1 RETURNING message_id",
    )
    .bind(before)
    .fetch_all(&mut **tx)
    .await?;
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Pending rows per partition and status: an index search on the pending statuses, so its
/// cost follows the pending mail, not the retained history.
const QUEUE_DEPTH: &str = "SELECT partition, status, COUNT(*) FROM queue \
     WHERE status IN ('queued', 'deferred') GROUP BY partition, status";

/// Finished and deferred rows changed since $1: reads `queue_by_status_updated`.
const RECENT_BY_STATUS: &str = "SELECT status, COUNT(*) FROM queue \
     WHERE status IN ('delivered', 'failed', 'deferred') AND updated_at >= $1 GROUP BY status";

/// Messages received since $1: reads `messages_by_received`.
const RECENT_ACCEPTED: &str = "SELECT COUNT(*) FROM messages WHERE received_at >= $1";

/// Deferred rows by domain. The `IN` term repeats the predicate of the partial index
/// `queue_pending_by_domain`, which lets SQLite pick it.
const DEFERRED_BY_DOMAIN: &str = "SELECT domain, COUNT(*) AS n FROM queue \
     WHERE status IN ('queued', 'deferred') AND status = 'deferred' \
     GROUP BY domain ORDER BY n DESC, domain LIMIT $1";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// PostgreSQL's `lock_not_available`: a statement gave up waiting for a row lock.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// A partition whose lease row is locked by another session is tried again after this long.
const LOCKED_RETRY: Duration = Duration::from_secs(1);

#[async_trait::async_trait]
impl QueueStore for SqlStore {
    async fn ensure_partition_count(&self, partitions: u32) -> Result<(), StoreError> {
        // Several replicas may start at once: the first insert wins, every one then compares.
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('queue.partitions', $1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(partitions.to_string())
        .execute(self.pool())
        .await?;
        let stored: String =
            sqlx::query("SELECT value FROM settings WHERE name = 'queue.partitions'")
                .fetch_one(self.pool())
                .await?
                .try_get(0)?;
        if stored != partitions.to_string() {
            return Err(StoreError::PartitionCountChanged {
                configured: partitions,
                stored,
            });
        }
        // A row per partition from the start, so the cluster view lists every partition,
        // owned or not. Epoch 0: the first acquisition makes it 1, as on an insert.
        let values: Vec<String> = (0..partitions)
            .map(|p| format!("({p}, NULL, 0, 0)"))
            .collect();
        if !values.is_empty() {
            sqlx::query(&format!(
                "INSERT INTO partition_leases (partition, owner, epoch, lease_until) \
                 VALUES {} ON CONFLICT (partition) DO NOTHING",
                values.join(", ")
            ))
            .execute(self.pool())
            .await?;
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, StoreError> {
        let now = self.dialect().now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO partition_leases (partition, owner, epoch, lease_until) \
             VALUES ($1, $2, 1, {now} + $3) \
             ON CONFLICT (partition) DO UPDATE SET owner = excluded.owner, \
             epoch = partition_leases.epoch + 1, lease_until = excluded.lease_until \
             WHERE partition_leases.lease_until <= {now} OR partition_leases.owner IS NULL \
             RETURNING partition, epoch"
        ))
        .bind(i64::from(partition))
        .bind(owner)
        .bind(millis(ttl))
        // `fetch_all`, not `fetch_optional`: SQLite commits an autocommit write only when its
        // statement has run to the end, and a statement left after its first row would hold
        // the write lock on this idle lease connection, stalling every other writer.
        .fetch_all(self.takeover_pool())
        .await;
        let (row, locked) = match row {
            Ok(row) => (row, false),
            // The row is locked by another session: the transaction of a node that vanished
            // in the middle of it, until the server ends that session. Held, as far as this
            // node can tell: reported as such (a plain read does not wait for the lock), to be
            // tried again in a moment instead of holding up the other partitions.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                (Vec::new(), true)
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(row) = row.first() {
            return Ok(LeaseGrant::Granted(lease_from_row(row, owner)?));
        }
        // Held: say by whom and for how long, by the same clock that decides expiry.
        let row = sqlx::query(&format!(
            "SELECT owner, lease_until - {now} FROM partition_leases WHERE partition = $1"
        ))
        .bind(i64::from(partition))
        .fetch_optional(self.takeover_pool())
        .await?;
        let (owner, left) = match row {
            Some(row) => (row.try_get(0)?, row.try_get::<i64, _>(1)?),
            // Released and gone between the two statements: free now.
            None => (None, 0),
        };
        let mut expires_in = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        if locked {
            expires_in = expires_in.max(LOCKED_RETRY);
        }
        Ok(LeaseGrant::Held { owner, expires_in })
    }

    async fn adopt_lease(
        &self,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = self.dialect().now_ms();
        let row = sqlx::query(&format!(
            "UPDATE partition_leases SET epoch = epoch + 1, lease_until = {now} + $3 \
             WHERE partition = $1 AND owner = $2 AND lease_until > {now} \
             RETURNING partition, epoch"
        ))
        .bind(i64::from(partition))
        .bind(owner)
        .bind(millis(ttl))
        .fetch_all(self.lease_pool())
        .await?;
        Ok(row.first().map(|r| lease_from_row(r, owner)).transpose()?)
    }

    async fn renew_leases(&self, owner: &str, ttl: Duration) -> Result<Vec<Lease>, StoreError> {
        let now = self.dialect().now_ms();
        let rows = sqlx::query(&format!(
            "UPDATE partition_leases SET lease_until = {now} + $2 \
             WHERE owner = $1 AND lease_until > {now} RETURNING partition, epoch"
        ))
        .bind(owner)
        .bind(millis(ttl))
        .fetch_all(self.lease_pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| lease_from_row(r, owner))
            .collect::<Result<_, _>>()?)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE partition_leases SET owner = NULL, lease_until = 0 \
             WHERE partition = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(i64::from(lease.partition))
        .bind(&lease.owner)
        .bind(lease.epoch)
        .execute(self.lease_pool())
        .await?;
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition, owner, epoch, lease_until FROM partition_leases \
             ORDER BY partition",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(LeaseInfo {
                partition: r.try_get::<i64, _>(0)? as u32,
                owner: r.try_get(1)?,
                epoch: r.try_get(2)?,
                lease_until: r.try_get(3)?,
            });
        }
        Ok(out)
    }

    async fn due_domains(
        &self,
        partition: u32,
        skip: &[String],
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let skipped = if skip.is_empty() {
            String::new()
        } else {
            format!(
                " AND domain NOT IN ({})",
                batch::parameter_list(4, skip.len())
            )
        };
        let sql = format!(
            "SELECT domain, MIN(next_attempt_at) AS due FROM queue WHERE partition = $1 \
             AND status IN ('queued', 'deferred') AND next_attempt_at <= $2{skipped} \
             GROUP BY domain ORDER BY due, domain LIMIT $3"
        );
        let mut query = sqlx::query(&sql)
            .bind(i64::from(partition))
            .bind(now_millis())
            .bind(i64::from(limit));
        for domain in skip {
            query = query.bind(domain);
        }
        let rows = query.fetch_all(self.pool()).await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn due_entries(
        &self,
        partition: u32,
        domain: &str,
        limit: u32,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE q.partition = $1 \
             AND q.status IN ('queued', 'deferred') AND q.domain = $2 \
             AND q.next_attempt_at <= $3 ORDER BY q.next_attempt_at, q.id LIMIT $4"
        ))
        .bind(i64::from(partition))
        .bind(domain)
        .bind(now_millis())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    async fn next_due(&self, partition: u32) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query(
            "SELECT MIN(next_attempt_at) FROM queue WHERE partition = $1 \
             AND status IN ('queued', 'deferred')",
        )
        .bind(i64::from(partition))
        .fetch_one(self.pool())
        .await?
        .try_get(0)?)
    }

    async fn list_queue(
        &self,
        filter: &QueueFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<QueueEntry>, StoreError> {
        let before = crate::store::parse_cursor(cursor)?;
        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE q.id < $1 \
             AND ($2 = '' OR q.status = $2) AND ($3 = '' OR q.domain = $3) \
             AND ($4 = '' OR lower(q.recipient) LIKE $4 ESCAPE '\\') \
             ORDER BY q.id DESC LIMIT $5"
        ))
        .bind(before)
        .bind(filter.status.map(QueueStatus::as_str).unwrap_or(""))
        .bind(
            filter
                .domain
                .as_deref()
                .map(str::to_ascii_lowercase)
                .unwrap_or_default(),
        )
        .bind(filter.recipient.as_deref().map_or(String::new(), |r| {
            // A case-insensitive substring: LIKE's wildcards in the text match themselves.
            let escaped = r
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        }))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        let items = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, limit, |i| i.id))
    }

    async fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE q.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(entry_from_row).transpose()?)
    }

    async fn queue_depth(&self) -> Result<Vec<(u32, QueueStatus, i64)>, StoreError> {
        let rows = sqlx::query(QUEUE_DEPTH).fetch_all(self.pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let status: String = r.try_get(1)?;
            if let Some(status) = QueueStatus::parse(&status) {
                out.push((r.try_get::<i64, _>(0)? as u32, status, r.try_get(2)?));
            }
        }
        Ok(out)
    }

    async fn activity(&self, since: Millis, top_domains: u32) -> Result<Activity, StoreError> {
        let mut out = Activity {
            accepted: sqlx::query_scalar(RECENT_ACCEPTED)
                .bind(since)
                .fetch_one(self.pool())
                .await?,
            ..Activity::default()
        };
        for r in sqlx::query(RECENT_BY_STATUS)
            .bind(since)
            .fetch_all(self.pool())
            .await?
        {
            let count: i64 = r.try_get(1)?;
            match QueueStatus::parse(&r.try_get::<String, _>(0)?) {
                Some(QueueStatus::Delivered) => out.delivered = count,
                Some(QueueStatus::Failed) => out.bounced = count,
                Some(QueueStatus::Deferred) => out.deferred = count,
                _ => {}
            }
        }
        for r in sqlx::query(DEFERRED_BY_DOMAIN)
            .bind(i64::from(top_domains))
            .fetch_all(self.pool())
            .await?
        {
            out.deferred_by_domain.push((r.try_get(0)?, r.try_get(1)?));
        }
        Ok(out)
    }

    async fn trace(&self, q: &str, limit: u32) -> Result<Vec<TraceMessage>, StoreError> {
        let q = q.trim();
        let header = q.trim_start_matches('<').trim_end_matches('>');
        let mut ids: Vec<String> = Vec::new();
        if let Ok(queue_id) = q.parse::<i64>() {
            ids.extend(
                sqlx::query_scalar::<_, String>("SELECT message_id FROM queue WHERE id = $1")
                    .bind(queue_id)
                    .fetch_optional(self.pool())
                    .await?,
            );
        }
        ids.extend(
            sqlx::query_scalar::<_, String>("SELECT id FROM messages WHERE id = $1")
                .bind(q)
                .fetch_optional(self.pool())
                .await?,
        );
        ids.extend(
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM messages WHERE message_id = $1 ORDER BY received_at DESC LIMIT $2",
            )
            .bind(header)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?,
        );
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        ids.truncate(limit as usize);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(m) = sqlx::query(
                "SELECT id, message_id, from_addr, envelope_from, received_at, size \
                 FROM messages WHERE id = $1",
            )
            .bind(&id)
            .fetch_optional(self.pool())
            .await?
            else {
                continue;
            };
            let local_recipients = sqlx::query_scalar(
                // Every copy but a sender's own in Sent.
                "SELECT DISTINCT u.email FROM mailbox_entries e JOIN users u ON u.id = e.user_id \
                 JOIN folders f ON f.id = e.folder_id WHERE e.message_id = $1 \
                 AND (f.special_use IS NULL OR f.special_use <> '\\Sent') ORDER BY u.email",
            )
            .bind(&id)
            .fetch_all(self.pool())
            .await?;
            let rows = sqlx::query(&format!(
                "SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE q.message_id = $1 ORDER BY q.id"
            ))
            .bind(&id)
            .fetch_all(self.pool())
            .await?;
            let mut remote = Vec::with_capacity(rows.len());
            for row in &rows {
                let entry = entry_from_row(row)?;
                let attempts = sqlx::query(
                    "SELECT attempted_at, outcome, detail, node FROM delivery_attempts \
                     WHERE queue_id = $1 ORDER BY id",
                )
                .bind(entry.id)
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(|a| {
                    Ok(AttemptRecord {
                        attempted_at: a.try_get(0)?,
                        outcome: a.try_get(1)?,
                        detail: a.try_get(2)?,
                        node: a.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
                remote.push((entry, attempts));
            }
            out.push(TraceMessage {
                id: m.try_get(0)?,
                message_id: m.try_get(1)?,
                from: m.try_get(2)?,
                envelope_from: m.try_get(3)?,
                received_at: m.try_get(4)?,
                size: m.try_get(5)?,
                local_recipients,
                remote,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MailboxStore, MessageSummary, RemoteRecipient, WriteOp};

    async fn store() -> (tempfile::TempDir, SqlStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::sql::test_sqlite(dir.path(), "q").await;
        (dir, store)
    }

    fn message(id: &str, rcpt: &str, partition: u32) -> AcceptedMessage {
        AcceptedMessage {
            id: id.into(),
            blob_key: "0".repeat(64),
            inline_body: None,
            size: 10,
            received_at: now_millis(),
            envelope_from: "a@here.test".into(),
            summary: MessageSummary::default(),
            deliveries: vec![],
            remote_recipients: vec![RemoteRecipient {
                recipient: rcpt.into(),
                domain: rcpt.rsplit('@').next().unwrap_or_default().into(),
                partition,
            }],
            expires_at: now_millis() + 60_000,
        }
    }

    /// Every body present: these tests are about rows, not bodies.
    struct AllBodies;

    #[async_trait::async_trait]
    impl crate::store::BlobStore for AllBodies {
        async fn contains(&self, _key: &str) -> Result<bool, crate::store::BlobError> {
            Ok(true)
        }
        async fn put(&self, _key: &str, _data: &[u8]) -> Result<(), crate::store::BlobError> {
            Ok(())
        }
        async fn get(&self, key: &str) -> Result<Vec<u8>, crate::store::BlobError> {
            Err(crate::store::BlobError::NotFound(key.into()))
        }
        async fn delete(&self, _key: &str) -> Result<(), crate::store::BlobError> {
            Ok(())
        }
        async fn health(&self) -> Result<(), crate::store::BlobError> {
            Ok(())
        }
    }

    /// One write through the group-commit path, as the storage writer does it.
    async fn write(store: &SqlStore, op: WriteOp) -> Result<(), StoreError> {
        store
            .write_batch(&[op], &AllBodies)
            .await
            .expect("batch commits")
            .remove(0)
    }

    async fn apply(
        store: &SqlStore,
        lease: &Lease,
        updates: &[EntryUpdate],
    ) -> Result<(), StoreError> {
        write(
            store,
            WriteOp::Apply {
                lease: lease.clone(),
                updates: updates.to_vec(),
                new_messages: vec![],
            },
        )
        .await
    }

    fn granted(grant: Result<LeaseGrant, StoreError>) -> Lease {
        match grant.expect("query") {
            LeaseGrant::Granted(lease) => lease,
            held => panic!("lease not granted: {held:?}"),
        }
    }

    /// One queued row in `partition` for `rcpt`, as its owner would see it.
    async fn queued(store: &SqlStore, id: &str, rcpt: &str, partition: u32) -> QueueEntry {
        write(store, WriteOp::Accept(message(id, rcpt, partition)))
            .await
            .expect("commit");
        let domain = rcpt.rsplit('@').next().unwrap_or_default();
        store
            .due_entries(partition, domain, 10)
            .await
            .expect("due")
            .into_iter()
            .find(|e| e.message_id == id)
            .expect("row")
    }

    fn deferral(entry: &QueueEntry) -> EntryUpdate {
        EntryUpdate {
            id: entry.id,
            status: QueueStatus::Deferred,
            attempts: entry.attempts + 1,
            next_attempt_at: now_millis() + 60_000,
            last_error: Some("451 later".into()),
            attempt: None,
        }
    }

    #[tokio::test]
    async fn an_update_under_a_stale_epoch_changes_nothing() {
        let (_dir, store) = store().await;
        let ttl = Duration::from_secs(10);
        let lease = granted(store.acquire_lease(1, "n", ttl).await);
        let entry = queued(&store, "m1", "x@r.test", 1).await;
        let stale = Lease {
            epoch: lease.epoch - 1,
            ..lease.clone()
        };
        let result = apply(&store, &stale, &[deferral(&entry)]).await;
        assert!(
            matches!(result, Err(StoreError::LeaseLost { partition: 1 })),
            "{result:?}"
        );
        let after = store
            .queue_entry(entry.id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(after.status, QueueStatus::Queued);
        assert_eq!(after.attempts, 0);
        assert!(after.last_error.is_none());
    }

    /// One op changes several rows in one statement: each row gets its own update's values,
    /// and each attempt is recorded with its row.
    #[tokio::test]
    async fn one_apply_changes_each_row_as_its_own_update_says() {
        let (_dir, store) = store().await;
        let lease = granted(store.acquire_lease(1, "n", Duration::from_secs(10)).await);
        let entries = [
            queued(&store, "m1", "a@r.test", 1).await,
            queued(&store, "m2", "b@r.test", 1).await,
            queued(&store, "m3", "c@r.test", 1).await,
        ];
        let attempt = |outcome, detail: &str| {
            Some(Attempt {
                outcome,
                detail: detail.into(),
            })
        };
        let delivered = EntryUpdate {
            status: QueueStatus::Delivered,
            attempts: 1,
            last_error: None,
            attempt: attempt("delivered", "250 2.0.0 queued as A"),
            ..deferral(&entries[0])
        };
        let deferred = EntryUpdate {
            attempt: attempt("deferred", "451 later"),
            ..deferral(&entries[1])
        };
        let failed = EntryUpdate {
            status: QueueStatus::Failed,
            last_error: Some("550 no such user".into()),
            attempt: attempt("bounced", "550 no such user"),
            ..deferral(&entries[2])
        };
        let updates = [delivered, deferred, failed];
        apply(&store, &lease, &updates).await.expect("apply");
        for (entry, update) in entries.iter().zip(&updates) {
            let after = store
                .queue_entry(entry.id)
                .await
                .expect("read")
                .expect("row");
            assert_eq!(
                (
                    after.status,
                    after.attempts,
                    &after.last_error,
                    after.next_attempt_at
                ),
                (
                    update.status,
                    update.attempts,
                    &update.last_error,
                    update.next_attempt_at
                ),
                "row {}",
                entry.message_id
            );
            let trace = store.trace(&entry.message_id, 1).await.expect("trace");
            let recorded: Vec<&str> = trace[0].remote[0]
                .1
                .iter()
                .map(|a| a.detail.as_str())
                .collect();
            let expected = update.attempt.as_ref().map(|a| a.detail.as_str());
            assert_eq!(
                recorded,
                Vec::from_iter(expected),
                "row {}",
                entry.message_id
            );
        }
    }

    /// The row UPDATE itself is fenced, not only the check before it: an update aimed at a
    /// row of another partition (whose lease the writer does not hold) fails the whole op.
    #[tokio::test]
    async fn every_row_update_is_fenced_and_a_miss_rolls_the_op_back() {
        let (_dir, store) = store().await;
        let ttl = Duration::from_secs(10);
        let lease = granted(store.acquire_lease(1, "n", ttl).await);
        let mine = queued(&store, "m1", "x@r.test", 1).await;
        let other = queued(&store, "m2", "y@s.test", 2).await;
        let result = apply(&store, &lease, &[deferral(&mine), deferral(&other)]).await;
        assert!(
            matches!(result, Err(StoreError::LeaseLost { partition: 1 })),
            "{result:?}"
        );
        let after = store
            .queue_entry(mine.id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(after.status, QueueStatus::Queued, "rolled back with its op");
        apply(&store, &lease, &[deferral(&mine)])
            .await
            .expect("a valid update commits");
        let after = store
            .queue_entry(mine.id)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(after.status, QueueStatus::Deferred);
    }

    #[tokio::test]
    async fn adopting_bumps_the_epoch_and_fences_the_previous_holder() {
        let (_dir, store) = store().await;
        let ttl = Duration::from_secs(10);
        let old = granted(store.acquire_lease(4, "n", ttl).await);
        let entry = queued(&store, "m1", "x@r.test", 4).await;
        let adopted = store
            .adopt_lease(4, "n", ttl)
            .await
            .expect("query")
            .expect("held by n");
        assert_eq!(adopted.epoch, old.epoch + 1);
        assert_eq!(adopted.owner, "n");
        let stale = apply(&store, &old, &[deferral(&entry)]).await;
        assert!(
            matches!(stale, Err(StoreError::LeaseLost { partition: 4 })),
            "{stale:?}"
        );
        apply(&store, &adopted, &[deferral(&entry)])
            .await
            .expect("the adopter may write");
        assert!(
            store
                .adopt_lease(4, "other", ttl)
                .await
                .expect("query")
                .is_none(),
            "only the holder adopts"
        );
        let short = granted(
            store
                .acquire_lease(5, "n", Duration::from_millis(100))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            store
                .adopt_lease(5, "n", ttl)
                .await
                .expect("query")
                .is_none(),
            "an expired lease is not adopted but acquired"
        );
        assert_eq!(
            granted(store.acquire_lease(5, "n", ttl).await).epoch,
            short.epoch + 1
        );
    }

    #[tokio::test]
    async fn a_held_lease_says_by_whom_and_for_how_long() {
        let (_dir, store) = store().await;
        granted(store.acquire_lease(2, "a", Duration::from_secs(5)).await);
        match store
            .acquire_lease(2, "b", Duration::from_secs(5))
            .await
            .expect("query")
        {
            LeaseGrant::Held { owner, expires_in } => {
                assert_eq!(owner.as_deref(), Some("a"));
                assert!(
                    expires_in > Duration::from_secs(3) && expires_in <= Duration::from_secs(5),
                    "{expires_in:?}"
                );
            }
            granted => panic!("a held lease was granted: {granted:?}"),
        }
        // Its own valid lease is held too: adoption is a separate, explicit step.
        assert!(matches!(
            store
                .acquire_lease(2, "a", Duration::from_secs(5))
                .await
                .expect("query"),
            LeaseGrant::Held { owner: Some(o), .. } if o == "a"
        ));
    }

    #[tokio::test]
    async fn a_release_with_an_old_epoch_does_nothing() {
        let (_dir, store) = store().await;
        let ttl = Duration::from_secs(10);
        let old = granted(store.acquire_lease(6, "n", ttl).await);
        let current = store
            .adopt_lease(6, "n", ttl)
            .await
            .expect("query")
            .expect("adopted");
        store.release_lease(&old).await.expect("release");
        assert!(matches!(
            store.acquire_lease(6, "m", ttl).await.expect("query"),
            LeaseGrant::Held { owner: Some(o), .. } if o == "n"
        ));
        store.release_lease(&current).await.expect("release");
        assert_eq!(
            granted(store.acquire_lease(6, "m", ttl).await).epoch,
            current.epoch + 1
        );
    }

    #[tokio::test]
    async fn every_partition_is_listed_with_its_lease() {
        let (_dir, store) = store().await;
        store.ensure_partition_count(4).await.expect("count");
        let lease = granted(store.acquire_lease(2, "n", Duration::from_secs(10)).await);
        let leases = store.list_leases().await.expect("list");
        assert_eq!(
            leases.iter().map(|l| l.partition).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(
            leases
                .iter()
                .filter(|l| l.partition != 2)
                .all(|l| l.owner.is_none() && l.epoch == 0)
        );
        assert_eq!(leases[2].owner.as_deref(), Some("n"));
        assert_eq!(leases[2].epoch, lease.epoch);
        assert_eq!(
            lease.epoch, 1,
            "the first acquisition of a listed row is epoch 1"
        );
        assert!(leases[2].lease_until > now_millis());
        // Listing again changes nothing (start-up of another node).
        store.ensure_partition_count(4).await.expect("count");
        assert_eq!(store.list_leases().await.expect("list"), leases);
    }

    #[tokio::test]
    async fn a_lease_is_exclusive_until_it_expires_and_takeover_fences_the_old_owner() {
        let (_dir, store) = store().await;
        let a = granted(
            store
                .acquire_lease(3, "node-a", Duration::from_millis(300))
                .await,
        );
        assert_eq!(a.epoch, 1);
        assert!(
            matches!(
                store
                    .acquire_lease(3, "node-b", Duration::from_secs(10))
                    .await
                    .expect("query"),
                LeaseGrant::Held { .. }
            ),
            "held lease must not be taken"
        );
        write(&store, WriteOp::Accept(message("m1", "x@remote.test", 3)))
            .await
            .expect("commit");
        let entry = store
            .due_entries(3, "remote.test", 10)
            .await
            .expect("due")
            .remove(0);
        let update = EntryUpdate {
            id: entry.id,
            status: QueueStatus::Deferred,
            attempts: 1,
            next_attempt_at: now_millis(),
            last_error: Some("451 later".into()),
            attempt: None,
        };
        apply(&store, &a, std::slice::from_ref(&update))
            .await
            .expect("owner may write");

        tokio::time::sleep(Duration::from_millis(400)).await;
        let b = granted(
            store
                .acquire_lease(3, "node-b", Duration::from_secs(10))
                .await,
        );
        assert_eq!(b.epoch, 2);
        let stale = apply(&store, &a, std::slice::from_ref(&update)).await;
        assert!(
            matches!(stale, Err(StoreError::LeaseLost { partition: 3 })),
            "{stale:?}"
        );
        assert!(
            store
                .renew_leases("node-a", Duration::from_secs(10))
                .await
                .expect("renew")
                .is_empty()
        );
        assert_eq!(
            store
                .renew_leases("node-b", Duration::from_secs(10))
                .await
                .expect("renew"),
            vec![b.clone()]
        );
        apply(&store, &b, &[update])
            .await
            .expect("new owner may write");

        store.release_lease(&b).await.expect("release");
        let c = granted(
            store
                .acquire_lease(3, "node-c", Duration::from_secs(10))
                .await,
        );
        assert_eq!(c.epoch, 3);
    }

    #[tokio::test]
    async fn finished_rows_are_purged_with_their_messages() {
        let (_dir, store) = store().await;
        let lease = granted(store.acquire_lease(0, "n", Duration::from_secs(10)).await);
        write(&store, WriteOp::Accept(message("m1", "x@r.test", 0)))
            .await
            .expect("commit");
        let entry = store
            .due_entries(0, "r.test", 10)
            .await
            .expect("due")
            .remove(0);
        assert_eq!(entry.status, QueueStatus::Queued);
        let update = EntryUpdate {
            id: entry.id,
            status: QueueStatus::Delivered,
            attempts: 1,
            next_attempt_at: entry.next_attempt_at,
            last_error: None,
            attempt: Some(crate::store::Attempt {
                outcome: "delivered",
                detail: format!("250 {}", "é".repeat(1000)),
            }),
        };
        // A stale epoch writes neither the row nor its attempt.
        let stale = Lease {
            epoch: lease.epoch + 1,
            ..lease.clone()
        };
        assert!(
            apply(&store, &stale, std::slice::from_ref(&update))
                .await
                .is_err()
        );
        async fn attempts(store: &SqlStore) -> Vec<AttemptRecord> {
            store
                .trace("m1", 5)
                .await
                .expect("trace")
                .remove(0)
                .remote
                .remove(0)
                .1
        }
        assert!(attempts(&store).await.is_empty());
        apply(&store, &lease, &[update]).await.expect("apply");
        let recorded = attempts(&store).await;
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].outcome, "delivered");
        assert_eq!(recorded[0].node, "n");
        // Cut to 1 KB on a character boundary.
        assert!(recorded[0].detail.len() <= ATTEMPT_DETAIL_MAX && recorded[0].detail.len() > 1000);
        assert!(
            store
                .due_entries(0, "r.test", 10)
                .await
                .expect("due")
                .is_empty()
        );
        let keys = store.purge_finished(now_millis() + 1).await.expect("purge");
        assert_eq!(keys, vec!["0".repeat(64)]);
        assert_eq!(store.count_messages().await.expect("count"), 0);
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_attempts")
            .fetch_one(store.pool())
            .await
            .expect("count attempts");
        assert_eq!(left, 0, "attempts are purged with their rows");
    }

    #[tokio::test]
    async fn a_failing_write_does_not_fail_its_batch() {
        let (_dir, store) = store().await;
        let stale = Lease {
            partition: 5,
            owner: "nobody".into(),
            epoch: 7,
        };
        let results = store
            .write_batch(
                &[
                    WriteOp::Accept(message("m1", "x@r.test", 5)),
                    WriteOp::Apply {
                        lease: stale,
                        updates: vec![],
                        new_messages: vec![message("m2", "y@r.test", 5)],
                    },
                    WriteOp::Accept(message("m3", "z@r.test", 5)),
                ],
                &AllBodies,
            )
            .await
            .expect("batch commits");
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(matches!(
            results[1],
            Err(StoreError::LeaseLost { partition: 5 })
        ));
        assert_eq!(
            store.count_messages().await.expect("count"),
            2,
            "m2 was rolled back alone"
        );
    }

    #[tokio::test]
    async fn a_busy_domain_does_not_hide_the_others_in_its_partition() {
        let (_dir, store) = store().await;
        // Many older rows for one domain, then one row for another, in the same partition.
        for i in 0..30 {
            let m = message(&format!("busy{i}"), &format!("u{i}@busy.test"), 7);
            write(&store, WriteOp::Accept(m)).await.expect("commit");
        }
        write(&store, WriteOp::Accept(message("calm", "u@calm.test", 7)))
            .await
            .expect("commit");
        let all = store.due_domains(7, &[], 10).await.expect("domains");
        assert_eq!(all, vec!["busy.test".to_string(), "calm.test".to_string()]);
        // busy.test has no free connection: only calm.test is offered, whatever the age.
        let free = store
            .due_domains(7, &["busy.test".to_string()], 1)
            .await
            .expect("domains");
        assert_eq!(free, vec!["calm.test".to_string()]);
        let rows = store.due_entries(7, "calm.test", 5).await.expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].recipient, "u@calm.test");
        assert_eq!(
            store
                .due_entries(7, "busy.test", 5)
                .await
                .expect("rows")
                .len(),
            5
        );
    }

    /// SQLite's plan steps for `query` (any `$1` bound to 0).
    async fn query_plan(store: &SqlStore, query: &str) -> Vec<String> {
        let sql = format!("EXPLAIN QUERY PLAN {query}");
        let mut plan = sqlx::query(&sql);
        if query.contains("$1") {
            plan = plan.bind(0_i64);
        }
        plan.fetch_all(store.pool())
            .await
            .expect("plan")
            .iter()
            .map(|r| r.try_get::<String, _>(3).expect("detail"))
            .collect()
    }

    /// The gauges refresh every few seconds: they must read the pending rows' index, not the
    /// whole table with its retained history.
    #[tokio::test]
    async fn queue_depth_reads_only_the_pending_index() {
        let (_dir, store) = store().await;
        let plan = query_plan(&store, QUEUE_DEPTH).await;
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH queue USING"))
                && !plan.iter().any(|step| step.starts_with("SCAN queue")),
            "{plan:?}"
        );
        write(&store, WriteOp::Accept(message("m1", "x@r.test", 2)))
            .await
            .expect("commit");
        assert_eq!(
            store.queue_depth().await.expect("depth"),
            vec![(2, QueueStatus::Queued, 1)]
        );
    }

    /// The dashboard refreshes often: each of its queries must search an index.
    #[tokio::test]
    async fn activity_reads_indexes() {
        let (_dir, store) = store().await;
        for query in [RECENT_BY_STATUS, RECENT_ACCEPTED, DEFERRED_BY_DOMAIN] {
            let plan = query_plan(&store, query).await;
            assert!(
                plan.iter().any(|step| step.starts_with("SEARCH "))
                    && !plan.iter().any(|step| step.starts_with("SCAN ")),
                "{query}: {plan:?}"
            );
        }
        write(&store, WriteOp::Accept(message("m1", "x@r.test", 2)))
            .await
            .expect("commit");
        let activity = store.activity(0, 20).await.expect("activity");
        assert_eq!(activity.accepted, 1);
        assert_eq!(activity.deferred_by_domain, vec![]);
        assert_eq!(
            store.activity(i64::MAX, 20).await.expect("later").accepted,
            0
        );
    }

    #[tokio::test]
    async fn the_partition_count_cannot_change() {
        let (_dir, store) = store().await;
        store.ensure_partition_count(64).await.expect("first");
        store.ensure_partition_count(64).await.expect("same");
        assert!(matches!(
            store.ensure_partition_count(32).await,
            Err(StoreError::PartitionCountChanged { configured: 32, .. })
        ));
    }
}
