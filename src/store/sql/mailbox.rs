//! Mailboxes and messages: the [`MailboxStore`] of [`SqlStore`].

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Dialect, SqlStore, Tx, batch};
use crate::store::blob::BlobStore;
use crate::store::{
    AcceptedMessage, MailboxItem, MailboxStore, MessageSummary, Millis, Page, RemoteRecipient,
    StoreError, WriteOp,
};

const MAILBOX_COLUMNS: &str = "e.id, e.folder, e.seen, e.created_at, m.size, m.blob_key, \
     m.envelope_from, m.from_addr, m.to_addrs, m.cc_addrs, m.subject, m.date, m.message_id, m.has_attachments";

impl SqlStore {
    /// The body kept in the row of a message under `key`, as stored.
    pub(crate) async fn inline_body(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query(
            "SELECT body FROM messages WHERE blob_key = $1 AND body IS NOT NULL LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The bodies kept in their rows among `keys` (in one query per 256 keys), by key; keys
    /// whose bodies are in the blob store are missing from the map.
    pub(crate) async fn inline_bodies(
        &self,
        keys: &[&str],
    ) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        let mut bodies = HashMap::new();
        for chunk in keys.chunks(batch::ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT blob_key, body FROM messages WHERE blob_key IN ({}) AND body IS NOT NULL",
                batch::parameter_list(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(*key);
            }
            for row in query.fetch_all(&self.pool).await? {
                bodies.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(bodies)
    }

    /// Whether a message under `key` keeps its body in its row.
    pub(crate) async fn has_inline_body(&self, key: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM messages WHERE blob_key = $1 AND body IS NOT NULL LIMIT 1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Deletes messages that no mailbox and no queue entry refer to any more; returns the
    /// keys of blob-store bodies that became unreferenced, for
    /// [`crate::store::Stores::delete_blobs`] (which decides again, under its lock, after this
    /// transaction commits).
    pub(crate) async fn delete_orphans(
        tx: &mut Tx,
        message_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for id in message_ids {
            let deleted = sqlx::query(
                "DELETE FROM messages WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM mailbox_entries WHERE message_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = $1) \
                 RETURNING blob_key, CAST(CASE WHEN body IS NULL THEN 0 ELSE 1 END AS BIGINT)",
            )
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(row) = deleted {
                let key: String = row.try_get(0)?;
                if row.try_get::<i64, _>(1)? == 1 {
                    // The body went with its row; the blob store never had it.
                    continue;
                }
                // Another message may carry the same body (same content address).
                let shared: i64 = sqlx::query("SELECT COUNT(*) FROM messages WHERE blob_key = $1")
                    .bind(&key)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)?;
                if shared == 0 {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
}

pub(super) fn flag(v: bool) -> i64 {
    i64::from(v)
}

fn mailbox_item_from_row(row: &AnyRow) -> Result<MailboxItem, sqlx::Error> {
    let list = |col: &str| -> Result<Vec<String>, sqlx::Error> {
        let text: String = row.try_get(col)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(MailboxItem {
        id: row.try_get("id")?,
        folder: row.try_get("folder")?,
        seen: row.try_get::<i64, _>("seen")? != 0,
        size: row.try_get("size")?,
        received_at: row.try_get("created_at")?,
        blob_key: row.try_get("blob_key")?,
        envelope_from: row.try_get("envelope_from")?,
        summary: MessageSummary {
            from: row.try_get("from_addr")?,
            to: list("to_addrs")?,
            cc: list("cc_addrs")?,
            subject: row.try_get("subject")?,
            date: row.try_get("date")?,
            message_id: row.try_get("message_id")?,
            has_attachments: row.try_get::<i64, _>("has_attachments")? != 0,
        },
    })
}

/// Inserts accepted messages: their rows, one mailbox entry per local recipient (with quota
/// usage), and one queue row per remote recipient. A few statements for the whole slice.
pub(crate) async fn insert_accepted(
    conn: &mut sqlx::AnyConnection,
    messages: &[&AcceptedMessage],
) -> Result<(), StoreError> {
    batch::insert(
        conn,
        "messages (id, blob_key, size, received_at, envelope_from, from_addr, to_addrs, \
         cc_addrs, subject, date, message_id, has_attachments, body)",
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        messages,
        |q, m| {
            let s = &m.summary;
            q.bind(&m.id)
                .bind(&m.blob_key)
                .bind(m.size)
                .bind(m.received_at)
                .bind(&m.envelope_from)
                .bind(&s.from)
                .bind(serde_json::to_string(&s.to).unwrap_or_else(|_| "[]".into()))
                .bind(serde_json::to_string(&s.cc).unwrap_or_else(|_| "[]".into()))
                .bind(&s.subject)
                .bind(s.date)
                .bind(&s.message_id)
                .bind(flag(s.has_attachments))
                .bind(m.inline_body.as_deref())
        },
    )
    .await?;
    // (message, user, folder, seen): every local copy, the submitter's Sent copy included, in
    // the same commit as the message.
    let entries: Vec<(&AcceptedMessage, i64, &str, bool)> = messages
        .iter()
        .flat_map(|&m| {
            m.deliveries
                .iter()
                .map(move |d| (m, d.user_id, d.folder.as_str(), d.seen))
        })
        .collect();
    batch::insert(
        conn,
        "mailbox_entries (user_id, message_id, folder, seen, created_at)",
        "($1, $2, $3, $4, $5)",
        &entries,
        |q, &(m, user_id, folder, seen)| {
            q.bind(user_id)
                .bind(&m.id)
                .bind(folder)
                .bind(flag(seen))
                .bind(m.received_at)
        },
    )
    .await?;
    add_usage(conn, &entries).await?;
    let queued: Vec<(&AcceptedMessage, &RemoteRecipient)> = messages
        .iter()
        .flat_map(|&m| m.remote_recipients.iter().map(move |r| (m, r)))
        .collect();
    batch::insert(
        conn,
        "queue (message_id, sender, recipient, domain, partition, status, attempts, \
         next_attempt_at, created_at, expires_at, updated_at)",
        "($1, $2, $3, $4, $5, 'queued', 0, $6, $6, $7, $6)",
        &queued,
        |q, &(m, r)| {
            q.bind(&m.id)
                .bind(&m.envelope_from)
                .bind(&r.recipient)
                .bind(&r.domain)
                .bind(i64::from(r.partition))
                .bind(m.received_at)
                .bind(m.expires_at)
        },
    )
    .await?;
    Ok(())
}

/// Counts new mailbox entries in their users' mailbox sizes: one row change per user.
async fn add_usage(
    conn: &mut sqlx::AnyConnection,
    entries: &[(&AcceptedMessage, i64, &str, bool)],
) -> Result<(), sqlx::Error> {
    let mut usage = std::collections::BTreeMap::<i64, i64>::new();
    for &(m, user_id, ..) in entries {
        *usage.entry(user_id).or_default() += m.size;
    }
    let usage: Vec<(i64, i64)> = usage.into_iter().collect();
    let statement = |rows: &str| {
        format!(
            "UPDATE users SET used_bytes = used_bytes + v.column2 FROM (VALUES {rows}) AS v \
             WHERE users.id = v.column1"
        )
    };
    batch::execute(conn, statement, "($1, $2)", &usage, |q, &(id, bytes)| {
        q.bind(id).bind(bytes)
    })
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl MailboxStore for SqlStore {
    async fn write_batch(
        &self,
        ops: &[WriteOp],
        blobs: &dyn BlobStore,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.commit_batch(ops, blobs).await
    }

    async fn purge_finished(&self, before: Millis) -> Result<Vec<String>, StoreError> {
        self.purge(before).await
    }

    async fn delete_unreferenced_blobs(
        &self,
        keys: &[String],
        blobs: &dyn BlobStore,
    ) -> Result<usize, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Conflicts with the ROW EXCLUSIVE lock every acceptance commit takes first.
            sqlx::query("LOCK TABLE messages IN SHARE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let mut unreferenced = Vec::new();
        for key in keys {
            let referenced = sqlx::query("SELECT 1 FROM messages WHERE blob_key = $1 LIMIT 1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !referenced {
                unreferenced.push(key);
            }
        }
        // Deleted while the lock is held: a concurrent commit of the same body waits and then
        // finds it gone (and fails), or committed first and is seen as a reference above.
        let results =
            futures::future::join_all(unreferenced.iter().map(|key| blobs.delete(key))).await;
        let mut deleted = 0;
        for (key, result) in unreferenced.iter().zip(results) {
            match result {
                Ok(()) => deleted += 1,
                Err(error) => {
                    tracing::warn!(%key, %error, "could not delete an unreferenced blob")
                }
            }
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn list_mailbox(
        &self,
        user_id: i64,
        folder: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<MailboxItem>, StoreError> {
        let before = crate::store::parse_cursor(cursor)?;
        let rows = sqlx::query(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailbox_entries e JOIN messages m ON m.id = e.message_id \
             WHERE e.user_id = $1 AND e.folder = $2 AND e.id < $3 ORDER BY e.id DESC LIMIT $4"
        ))
        .bind(user_id)
        .bind(folder)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(mailbox_item_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, limit, |i| i.id))
    }

    async fn get_mailbox_item(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<Option<MailboxItem>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailbox_entries e JOIN messages m ON m.id = e.message_id \
             WHERE e.user_id = $1 AND e.id = $2"
        ))
        .bind(user_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(mailbox_item_from_row).transpose()?)
    }

    async fn set_seen(&self, user_id: i64, id: i64, seen: bool) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE mailbox_entries SET seen = $1 WHERE user_id = $2 AND id = $3")
                .bind(flag(seen))
                .bind(user_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_mailbox_item(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT e.message_id, m.size FROM mailbox_entries e JOIN messages m \
             ON m.id = e.message_id WHERE e.user_id = $1 AND e.id = $2",
        )
        .bind(user_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let message_id: String = row.try_get(0)?;
        let size: i64 = row.try_get(1)?;
        sqlx::query("DELETE FROM mailbox_entries WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE users SET used_bytes = CASE WHEN used_bytes > $1 THEN used_bytes - $1 ELSE 0 END \
             WHERE id = $2",
        )
        .bind(size)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        let keys = Self::delete_orphans(&mut tx, &[message_id]).await?;
        tx.commit().await?;
        Ok(Some(keys))
    }

    async fn count_messages(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM messages")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}
