//! Mailboxes and messages: the [`MailboxStore`] of [`SqlStore`].

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Dialect, SqlStore, Tx, batch};
use crate::store::blob::BlobStore;
use crate::store::{
    AcceptedMessage, Folder, FolderContents, FolderEntry, FolderState, INBOX, LocalDelivery,
    MailboxItem, MailboxStore, MessageSummary, Millis, Page, Record, RemoteRecipient,
    STANDARD_FOLDERS, StoreError, WriteOp, folder_name, now_millis, special_use_of,
};

const MAILBOX_COLUMNS: &str = "e.id, f.name AS folder, e.uid, e.flags, e.created_at, m.size, \
     m.blob_key, m.envelope_from, m.from_addr, m.to_addrs, m.cc_addrs, m.subject, m.date, \
     m.message_id, m.has_attachments";

const MAILBOX_FROM: &str = "mailbox_entries e JOIN folders f ON f.id = e.folder_id \
     JOIN messages m ON m.id = e.message_id";

/// A new folder's UIDVALIDITY: the time in seconds, as Dovecot does (fits 32 bits until 2106,
/// never 0).
fn new_uidvalidity() -> i64 {
    (now_millis() / 1000).clamp(1, i64::from(u32::MAX))
}

/// Creates those of the `(user, name)` folders that do not exist yet, each with a fresh
/// UIDVALIDITY and, for a standard name, its special use.
pub(crate) async fn ensure_folders(
    conn: &mut sqlx::AnyConnection,
    wanted: &[(i64, &str)],
) -> Result<(), sqlx::Error> {
    let (now, uidvalidity) = (now_millis(), new_uidvalidity());
    let statement = |rows: &str| {
        format!(
            "INSERT INTO folders (user_id, name, special_use, uidvalidity, created_at) \
             VALUES {rows} ON CONFLICT (user_id, name) DO NOTHING"
        )
    };
    // Above every UIDVALIDITY the user has had: a folder deleted and made again within the
    // same second still gets a new one, so no client mistakes its old UIDs for the new ones.
    let greatest = if conn.backend_name() == "PostgreSQL" {
        "GREATEST"
    } else {
        "MAX"
    };
    let row = format!(
        "($1, $2, $3, {greatest}($4, COALESCE((SELECT MAX(f.uidvalidity) + 1 FROM folders f \
         WHERE f.user_id = $1), 0)), $5)"
    );
    batch::execute(conn, statement, &row, wanted, |q, &(user_id, name)| {
        q.bind(user_id)
            .bind(name)
            .bind(special_use_of(name))
            .bind(uidvalidity)
            .bind(now)
    })
    .await?;
    Ok(())
}

/// Creates the standard folders (INBOX, Sent, Drafts, Junk, Trash, Archive) of a new user.
pub(crate) async fn create_standard_folders(
    conn: &mut sqlx::AnyConnection,
    user_id: i64,
) -> Result<(), sqlx::Error> {
    ensure_folders(conn, &STANDARD_FOLDERS.map(|(name, _)| (user_id, name))).await
}

/// Where new entries go, per `(user, folder)` of `wanted` (sorted by it, as a `BTreeMap`
/// gives it): the folder's id, the first of the `count` UIDs reserved for them, and the
/// modification sequence they get. The folders are created if missing and their rows stay
/// locked until the commit, so UIDs become visible in the order they were given: a client
/// never sees a UID below one it has seen.
async fn allocate_uids<'a>(
    conn: &mut sqlx::AnyConnection,
    wanted: &[((i64, &'a str), i64)],
) -> Result<HashMap<(i64, &'a str), (i64, i64, i64)>, sqlx::Error> {
    let folders: Vec<(i64, &str)> = wanted.iter().map(|&(folder, _)| folder).collect();
    ensure_folders(conn, &folders).await?;
    if conn.backend_name() == "PostgreSQL" {
        // One locking order (by id) for every commit that takes several folders, so two
        // concurrent commits wait for each other instead of deadlocking.
        let lock = |rows: &str| {
            format!(
                "SELECT f.id FROM folders f JOIN (VALUES {rows}) AS v (user_id, name) \
                 ON f.user_id = v.user_id AND f.name = v.name ORDER BY f.id FOR UPDATE OF f"
            )
        };
        batch::fetch(conn, lock, "($1, $2)", &folders, |q, &(user_id, name)| {
            q.bind(user_id).bind(name)
        })
        .await?;
    }
    let reserve = |rows: &str| {
        format!(
            "UPDATE folders SET uidnext = folders.uidnext + v.column3, \
             highestmodseq = folders.highestmodseq + 1 FROM (VALUES {rows}) AS v \
             WHERE folders.user_id = v.column1 AND folders.name = v.column2 \
             RETURNING id, user_id, name, uidnext, highestmodseq"
        )
    };
    let rows = batch::fetch(
        conn,
        reserve,
        "($1, $2, $3)",
        wanted,
        |q, &((user_id, name), count)| q.bind(user_id).bind(name).bind(count),
    )
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let (id, user_id, name): (i64, i64, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let (uidnext, modseq): (i64, i64) = (row.try_get(3)?, row.try_get(4)?);
        // Keyed by the caller's names, so looking a delivery up copies nothing.
        let found = wanted.binary_search_by(|&((u, n), _)| (u, n).cmp(&(user_id, name.as_str())));
        if let Ok(i) = found {
            let ((user_id, name), count) = wanted[i];
            out.insert((user_id, name), (id, uidnext - count, modseq));
        }
    }
    Ok(out)
}

/// Moves `folder_id` to its next modification sequence and returns it (locking the folder's
/// row until the commit, so changes in one folder are numbered in commit order).
async fn next_modseq(tx: &mut Tx, folder_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE id = $1 \
         RETURNING highestmodseq",
    )
    .bind(folder_id)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)
}

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

/// The next UID of folder `folder_id`, taken, with the modseq of the change.
async fn take_uid(tx: &mut Tx, folder_id: i64) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "UPDATE folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 \
         WHERE id = $1 RETURNING uidnext, highestmodseq",
    )
    .bind(folder_id)
    .fetch_one(&mut **tx)
    .await?;
    let (uidnext, modseq): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok((uidnext - 1, modseq))
}

fn folder_state_from_row(row: &AnyRow, at: usize) -> Result<FolderState, sqlx::Error> {
    Ok(FolderState {
        uidvalidity: row.try_get(at)?,
        uidnext: row.try_get(at + 1)?,
        highestmodseq: row.try_get(at + 2)?,
    })
}

/// The folder and UID of `user_id`'s entry `id`, if the user has it.
async fn entry_place(
    tx: &mut Tx,
    user_id: i64,
    id: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row =
        sqlx::query("SELECT folder_id, uid FROM mailbox_entries WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

/// The id of `user_id`'s folder `name`.
async fn folder_id(tx: &mut Tx, user_id: i64, name: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query("SELECT id FROM folders WHERE user_id = $1 AND name = $2")
        .bind(user_id)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| row.try_get(0))
        .transpose()
}

/// Removes every message of folder `folder_id` (its user's usage goes down by their size);
/// with `tombstones`, their UIDs are recorded as expunged (a folder that stays). Returns the
/// messages' ids, for [`SqlStore::delete_orphans`].
async fn remove_all_entries(
    tx: &mut Tx,
    user_id: i64,
    folder_id: i64,
    tombstones: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let modseq = next_modseq(tx, folder_id).await?;
    let rows = sqlx::query(
        "SELECT e.message_id, m.size FROM mailbox_entries e JOIN messages m \
         ON m.id = e.message_id WHERE e.folder_id = $1",
    )
    .bind(folder_id)
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut size = 0i64;
    let mut message_ids = Vec::with_capacity(rows.len());
    for row in &rows {
        message_ids.push(row.try_get::<String, _>(0)?);
        size = size.saturating_add(row.try_get(1)?);
    }
    if tombstones {
        sqlx::query(
            "INSERT INTO expunged (folder_id, uid, modseq) \
             SELECT folder_id, uid, $1 FROM mailbox_entries WHERE folder_id = $2",
        )
        .bind(modseq)
        .bind(folder_id)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM mailbox_entries WHERE folder_id = $1")
        .bind(folder_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE users SET used_bytes = CASE WHEN used_bytes > $1 THEN used_bytes - $1 ELSE 0 END \
         WHERE id = $2",
    )
    .bind(size)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    message_ids.sort();
    message_ids.dedup();
    Ok(message_ids)
}

/// Whether `e` is a unique key's refusal.
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
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
        uid: row.try_get("uid")?,
        flags: row.try_get("flags")?,
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
    // Every local copy, the submitter's Sent copy included, in the same commit as the
    // message, each with its UID: no acknowledged message is ever without one.
    let copies: Vec<(&AcceptedMessage, &LocalDelivery)> = messages
        .iter()
        .flat_map(|&m| m.deliveries.iter().map(move |d| (m, d)))
        .collect();
    let mut per_folder: BTreeMap<(i64, &str), i64> = BTreeMap::new();
    for (_, d) in &copies {
        *per_folder
            .entry((d.user_id, d.folder.as_str()))
            .or_default() += 1;
    }
    let wanted: Vec<((i64, &str), i64)> = per_folder.into_iter().collect();
    let mut places = allocate_uids(conn, &wanted).await?;
    let mut entries = Vec::with_capacity(copies.len());
    for (m, d) in copies {
        let Some((folder_id, next_uid, modseq)) = places.get_mut(&(d.user_id, d.folder.as_str()))
        else {
            // The user was deleted meanwhile: the commit fails as before, by its reference.
            return Err(StoreError::NotFound(crate::store::Record::User(
                d.user_id.to_string(),
            )));
        };
        let flags = d.flags;
        entries.push((m, d.user_id, *folder_id, *next_uid, *modseq, flags));
        *next_uid += 1;
    }
    batch::insert(
        conn,
        "mailbox_entries (user_id, folder_id, uid, modseq, flags, message_id, created_at)",
        "($1, $2, $3, $4, $5, $6, $7)",
        &entries,
        |q, &(m, user_id, folder_id, uid, modseq, flags)| {
            q.bind(user_id)
                .bind(folder_id)
                .bind(uid)
                .bind(modseq)
                .bind(flags)
                .bind(&m.id)
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

/// A new mailbox entry: the message, its user, folder, UID, modification sequence and flags.
type NewEntry<'a> = (&'a AcceptedMessage, i64, i64, i64, i64, i64);

/// Counts new mailbox entries in their users' mailbox sizes: one row change per user.
async fn add_usage(
    conn: &mut sqlx::AnyConnection,
    entries: &[NewEntry<'_>],
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

    async fn list_folders(&self, user_id: i64) -> Result<Vec<Folder>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.name, f.special_use, f.subscribed, f.uidvalidity, f.uidnext, \
             f.highestmodseq, COUNT(e.id), \
             CAST(COALESCE(SUM(CASE WHEN e.id IS NOT NULL AND (e.flags & 1) = 0 THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(m.size), 0) AS BIGINT) \
             FROM folders f LEFT JOIN mailbox_entries e ON e.folder_id = f.id \
             LEFT JOIN messages m ON m.id = e.message_id WHERE f.user_id = $1 \
             GROUP BY f.id, f.name, f.special_use, f.subscribed, f.uidvalidity, f.uidnext, \
             f.highestmodseq",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let mut folders = rows
            .iter()
            .map(|row| {
                Ok(Folder {
                    name: row.try_get(0)?,
                    special_use: row.try_get(1)?,
                    subscribed: row.try_get::<i64, _>(2)? != 0,
                    uidvalidity: row.try_get(3)?,
                    uidnext: row.try_get(4)?,
                    highestmodseq: row.try_get(5)?,
                    messages: row.try_get(6)?,
                    unseen: row.try_get(7)?,
                    size: row.try_get(8)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // The standard folders first, in their order, then the user's own by name.
        let rank = |name: &str| {
            STANDARD_FOLDERS
                .iter()
                .position(|(standard, _)| *standard == name)
                .unwrap_or(STANDARD_FOLDERS.len())
        };
        folders.sort_by(|a, b| (rank(&a.name), &a.name).cmp(&(rank(&b.name), &b.name)));
        Ok(folders)
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
            "SELECT {MAILBOX_COLUMNS} FROM {MAILBOX_FROM} \
             WHERE e.user_id = $1 AND f.name = $2 AND e.id < $3 ORDER BY e.id DESC LIMIT $4"
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
            "SELECT {MAILBOX_COLUMNS} FROM {MAILBOX_FROM} WHERE e.user_id = $1 AND e.id = $2"
        ))
        .bind(user_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(mailbox_item_from_row).transpose()?)
    }

    async fn set_flags(
        &self,
        user_id: i64,
        ids: &[i64],
        add: i64,
        remove: i64,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        // The messages by folder: each folder's change takes one modseq of its own.
        let mut by_folder = BTreeMap::<i64, Vec<i64>>::new();
        for chunk in ids.chunks(500) {
            let placeholders = (2..chunk.len() + 2)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT id, folder_id FROM mailbox_entries WHERE user_id = $1 AND id IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql).bind(user_id);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                by_folder
                    .entry(row.try_get(1)?)
                    .or_default()
                    .push(row.try_get(0)?);
            }
        }
        let mut found = 0;
        for (folder_id, ids) in by_folder {
            found += ids.len();
            let modseq = next_modseq(&mut tx, folder_id).await?;
            for chunk in ids.chunks(500) {
                let placeholders = (5..chunk.len() + 5)
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                // A message's own modification sequence moves only if its flags change
                // (RFC 7162).
                let sql = format!(
                    "UPDATE mailbox_entries SET flags = (flags | $1) & ~$2, modseq = $3 \
                     WHERE folder_id = $4 AND id IN ({placeholders}) \
                     AND flags <> ((flags | $1) & ~$2)"
                );
                let mut query = sqlx::query(&sql)
                    .bind(add)
                    .bind(remove)
                    .bind(modseq)
                    .bind(folder_id);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn folder_state(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<Option<FolderState>, StoreError> {
        let row = sqlx::query(
            "SELECT uidvalidity, uidnext, highestmodseq FROM folders WHERE user_id = $1 AND name = $2",
        )
        .bind(user_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| folder_state_from_row(&row, 0)).transpose()?)
    }

    async fn folder_contents(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<Option<FolderContents>, StoreError> {
        // One statement: the folder's state and its messages from one snapshot.
        let rows = sqlx::query(
            "SELECT f.uidvalidity, f.uidnext, f.highestmodseq, e.id, e.uid, e.flags, e.modseq, \
             e.created_at, m.size, m.blob_key, m.envelope_from \
             FROM folders f LEFT JOIN mailbox_entries e ON e.folder_id = f.id \
             LEFT JOIN messages m ON m.id = e.message_id \
             WHERE f.user_id = $1 AND f.name = $2 ORDER BY e.uid",
        )
        .bind(user_id)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let state = folder_state_from_row(first, 0)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(id) = row.try_get::<Option<i64>, _>(3)? else {
                continue;
            };
            entries.push(FolderEntry {
                id,
                uid: row.try_get(4)?,
                flags: row.try_get(5)?,
                modseq: row.try_get(6)?,
                received_at: row.try_get(7)?,
                size: row.try_get(8)?,
                blob_key: row.try_get(9)?,
                envelope_from: row.try_get(10)?,
            });
        }
        Ok(Some(FolderContents { state, entries }))
    }

    async fn expunged_since(
        &self,
        user_id: i64,
        name: &str,
        modseq: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT x.uid FROM expunged x JOIN folders f ON f.id = x.folder_id \
             WHERE f.user_id = $1 AND f.name = $2 AND x.modseq > $3 ORDER BY x.uid",
        )
        .bind(user_id)
        .bind(name)
        .bind(modseq)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn find_by_message_id(
        &self,
        user_id: i64,
        folder: &str,
        header_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT f.uidvalidity, e.uid FROM mailbox_entries e JOIN folders f \
             ON f.id = e.folder_id JOIN messages m ON m.id = e.message_id \
             WHERE f.user_id = $1 AND f.name = $2 AND m.message_id = $3 \
             ORDER BY e.uid DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(folder)
        .bind(header_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|row| -> Result<_, sqlx::Error> { Ok((row.try_get(0)?, row.try_get(1)?)) })
            .transpose()?)
    }

    async fn placed(
        &self,
        user_id: i64,
        message_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT f.uidvalidity, e.uid FROM mailbox_entries e JOIN folders f \
             ON f.id = e.folder_id WHERE e.user_id = $1 AND e.message_id = $2 \
             ORDER BY e.id DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|row| -> Result<_, sqlx::Error> { Ok((row.try_get(0)?, row.try_get(1)?)) })
            .transpose()?)
    }

    async fn copy_message(&self, user_id: i64, id: i64, to: &str) -> Result<i64, StoreError> {
        let to = folder_name(to)?;
        let mut tx = self.begin().await?;
        if entry_place(&mut tx, user_id, id).await?.is_none() {
            return Err(StoreError::NotFound(Record::Message(id)));
        }
        let Some(to_id) = folder_id(&mut tx, user_id, &to).await? else {
            return Err(StoreError::NotFound(Record::Folder(to)));
        };
        let (uid, modseq) = take_uid(&mut tx, to_id).await?;
        sqlx::query(
            "INSERT INTO mailbox_entries (user_id, folder_id, uid, modseq, flags, keywords, \
             message_id, created_at) SELECT user_id, $1, $2, $3, flags, keywords, message_id, \
             created_at FROM mailbox_entries WHERE id = $4",
        )
        .bind(to_id)
        .bind(uid)
        .bind(modseq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE users SET used_bytes = used_bytes + (SELECT m.size FROM mailbox_entries e \
             JOIN messages m ON m.id = e.message_id WHERE e.id = $1) WHERE id = $2",
        )
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(uid)
    }

    async fn create_folder(&self, user_id: i64, name: &str) -> Result<(), StoreError> {
        let name = folder_name(name)?;
        let mut tx = self.begin().await?;
        if folder_id(&mut tx, user_id, &name).await?.is_some() {
            return Err(StoreError::AlreadyExists(Record::Folder(name)));
        }
        ensure_folders(&mut tx, &[(user_id, name.as_str())]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rename_folder(&self, user_id: i64, from: &str, to: &str) -> Result<(), StoreError> {
        let (from, to) = (folder_name(from)?, folder_name(to)?);
        if from == INBOX {
            return Err(StoreError::FolderProtected(
                from,
                "cannot be renamed: new mail arrives there",
            ));
        }
        if to == from {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(StoreError::FolderProtected(
                from,
                "cannot be moved inside itself",
            ));
        }
        let mut tx = self.begin().await?;
        if folder_id(&mut tx, user_id, &from).await?.is_none() {
            return Err(StoreError::NotFound(Record::Folder(from)));
        }
        if folder_id(&mut tx, user_id, &to).await?.is_some() {
            return Err(StoreError::AlreadyExists(Record::Folder(to)));
        }
        // The folder and everything inside it; a name taken below the new one fails the
        // unique key and changes nothing.
        let prefix_chars = i64::try_from(from.chars().count()).unwrap_or(i64::MAX);
        let renamed = sqlx::query(
            "UPDATE folders SET name = $1 || substr(name, CAST($2 AS INTEGER) + 1), \
             special_use = NULL WHERE user_id = $3 \
             AND (name = $4 OR substr(name, 1, CAST($2 AS INTEGER) + 1) = $4 || '/')",
        )
        .bind(&to)
        .bind(prefix_chars)
        .bind(user_id)
        .bind(&from)
        .execute(&mut *tx)
        .await;
        match renamed {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(Record::Folder(format!(
                    "{to}/..."
                ))));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    async fn delete_folder(&self, user_id: i64, name: &str) -> Result<Vec<String>, StoreError> {
        let name = folder_name(name)?;
        if name == INBOX {
            return Err(StoreError::FolderProtected(
                name,
                "cannot be deleted: new mail arrives there",
            ));
        }
        let mut tx = self.begin().await?;
        let Some(id) = folder_id(&mut tx, user_id, &name).await? else {
            return Err(StoreError::NotFound(Record::Folder(name)));
        };
        let inside = sqlx::query(
            "SELECT 1 FROM folders WHERE user_id = $1 AND substr(name, 1, CAST($2 AS INTEGER)) = $3 \
             LIMIT 1",
        )
        .bind(user_id)
        .bind(i64::try_from(name.chars().count() + 1).unwrap_or(i64::MAX))
        .bind(format!("{name}/"))
        .fetch_optional(&mut *tx)
        .await?;
        if inside.is_some() {
            return Err(StoreError::FolderProtected(
                name,
                "has folders inside it; delete or move them first",
            ));
        }
        let message_ids = remove_all_entries(&mut tx, user_id, id, false).await?;
        sqlx::query("DELETE FROM folders WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let keys = Self::delete_orphans(&mut tx, &message_ids).await?;
        tx.commit().await?;
        Ok(keys)
    }

    async fn empty_folder(&self, user_id: i64, name: &str) -> Result<Vec<String>, StoreError> {
        let name = folder_name(name)?;
        let mut tx = self.begin().await?;
        let Some(id) = folder_id(&mut tx, user_id, &name).await? else {
            return Err(StoreError::NotFound(Record::Folder(name)));
        };
        let message_ids = remove_all_entries(&mut tx, user_id, id, true).await?;
        let keys = Self::delete_orphans(&mut tx, &message_ids).await?;
        tx.commit().await?;
        Ok(keys)
    }

    async fn set_subscribed(
        &self,
        user_id: i64,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError> {
        let name = folder_name(name)?;
        let done =
            sqlx::query("UPDATE folders SET subscribed = $1 WHERE user_id = $2 AND name = $3")
                .bind(flag(subscribed))
                .bind(user_id)
                .bind(&name)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Record::Folder(name)));
        }
        Ok(())
    }

    async fn move_message(&self, user_id: i64, id: i64, to: &str) -> Result<i64, StoreError> {
        let to = folder_name(to)?;
        let mut tx = self.begin().await?;
        let Some((from_id, uid)) = entry_place(&mut tx, user_id, id).await? else {
            return Err(StoreError::NotFound(Record::Message(id)));
        };
        let Some(to_id) = folder_id(&mut tx, user_id, &to).await? else {
            return Err(StoreError::NotFound(Record::Folder(to)));
        };
        if to_id == from_id {
            return Ok(uid);
        }
        if self.dialect == Dialect::Postgres {
            // Both folders, in id order, like every commit that takes several.
            sqlx::query("SELECT id FROM folders WHERE id IN ($1, $2) ORDER BY id FOR UPDATE")
                .bind(from_id)
                .bind(to_id)
                .fetch_all(&mut *tx)
                .await?;
        }
        let left = next_modseq(&mut tx, from_id).await?;
        sqlx::query("INSERT INTO expunged (folder_id, uid, modseq) VALUES ($1, $2, $3)")
            .bind(from_id)
            .bind(uid)
            .bind(left)
            .execute(&mut *tx)
            .await?;
        let (uid, modseq) = take_uid(&mut tx, to_id).await?;
        sqlx::query(
            "UPDATE mailbox_entries SET folder_id = $1, uid = $2, modseq = $3 WHERE id = $4",
        )
        .bind(to_id)
        .bind(uid)
        .bind(modseq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(uid)
    }

    async fn delete_mailbox_item(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.begin().await?;
        let Some((folder_id, _)) = entry_place(&mut tx, user_id, id).await? else {
            return Ok(None);
        };
        // The folder first (its lock orders every change in it), then the entry.
        let modseq = next_modseq(&mut tx, folder_id).await?;
        let row = sqlx::query(
            "SELECT e.message_id, m.size, e.uid FROM mailbox_entries e JOIN messages m \
             ON m.id = e.message_id WHERE e.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let message_id: String = row.try_get(0)?;
        let size: i64 = row.try_get(1)?;
        let uid: i64 = row.try_get(2)?;
        sqlx::query("DELETE FROM mailbox_entries WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // Remembered so a resynchronising client learns that the UID vanished.
        sqlx::query("INSERT INTO expunged (folder_id, uid, modseq) VALUES ($1, $2, $3)")
            .bind(folder_id)
            .bind(uid)
            .bind(modseq)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::flags;
    use crate::store::fs::FsBlobStore;
    use crate::store::sql::test_sqlite;
    use crate::store::sql::tests::accepted;
    use crate::store::{AccountStore, SENT};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqlStore,
        blobs: FsBlobStore,
        alice: i64,
        bob: i64,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_sqlite(dir.path(), "mb").await;
        let blobs = FsBlobStore::open(&dir.path().join("blobs")).expect("fs");
        store.add_domain("example.org").await.expect("domain");
        let alice = store.add_user("alice@example.org", "x", false, None).await;
        let bob = store.add_user("bob@example.org", "x", false, None).await;
        Fixture {
            alice: alice.expect("alice").id,
            bob: bob.expect("bob").id,
            _dir: dir,
            store,
            blobs,
        }
    }

    /// Commits one batch: a message per `(user, folder)`, in order.
    async fn deliver(f: &Fixture, copies: &[(i64, &str)]) {
        let ops: Vec<WriteOp> = copies
            .iter()
            .map(|&(user_id, folder)| {
                let id = crate::store::new_id();
                let mut m = accepted(&id, &id);
                m.inline_body = Some(bytes::Bytes::from_static(b"x\r\n"));
                m.deliveries = vec![LocalDelivery {
                    user_id,
                    folder: folder.into(),
                    flags: if folder == SENT {
                        crate::store::flags::SEEN
                    } else {
                        0
                    },
                }];
                WriteOp::Accept(m)
            })
            .collect();
        let results = f.store.write_batch(&ops, &f.blobs).await.expect("commit");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    /// `(entry id, uid, seen)` of a folder, oldest first.
    async fn entries(f: &Fixture, user_id: i64, folder: &str) -> Vec<(i64, i64, bool)> {
        let page = f
            .store
            .list_mailbox(user_id, folder, 1000, None)
            .await
            .expect("list");
        let mut out: Vec<_> = page.items.iter().map(|i| (i.id, i.uid, i.seen())).collect();
        out.reverse();
        out
    }

    async fn folder(f: &Fixture, user_id: i64, name: &str) -> Folder {
        f.store
            .list_folders(user_id)
            .await
            .expect("folders")
            .into_iter()
            .find(|folder| folder.name == name)
            .expect("the folder")
    }

    #[tokio::test]
    async fn a_new_user_has_the_standard_folders_with_their_special_use() {
        let f = fixture().await;
        let folders = f.store.list_folders(f.alice).await.expect("folders");
        let names: Vec<(&str, Option<&str>)> = folders
            .iter()
            .map(|folder| (folder.name.as_str(), folder.special_use.as_deref()))
            .collect();
        assert_eq!(names, STANDARD_FOLDERS.to_vec());
        for folder in &folders {
            assert!(folder.subscribed);
            assert!(folder.uidvalidity > 0 && folder.uidvalidity <= i64::from(u32::MAX));
            assert_eq!((folder.uidnext, folder.messages, folder.unseen), (1, 0, 0));
        }
    }

    /// UIDs ascend per folder in commit order, across batches and users, and an expunged
    /// UID is never handed out again; the expunge leaves a tombstone with its modseq.
    #[tokio::test]
    async fn uids_ascend_per_folder_and_an_expunged_uid_is_never_reused() {
        let f = fixture().await;
        deliver(
            &f,
            &[(f.alice, "INBOX"), (f.bob, "INBOX"), (f.alice, "INBOX")],
        )
        .await;
        deliver(&f, &[(f.alice, SENT), (f.alice, "INBOX"), (f.bob, "INBOX")]).await;
        let inbox = entries(&f, f.alice, "INBOX").await;
        let uids: Vec<i64> = inbox.iter().map(|e| e.1).collect();
        assert_eq!(uids, [1, 2, 3]);
        assert_eq!(entries(&f, f.bob, "INBOX").await.len(), 2);
        assert_eq!(
            entries(&f, f.alice, SENT).await,
            [(inbox[2].0 - 1, 1, true)]
        );
        let before = folder(&f, f.alice, "INBOX").await;
        assert_eq!((before.uidnext, before.messages, before.unseen), (4, 3, 3));

        let last = inbox[2].0;
        f.store
            .delete_mailbox_item(f.alice, last)
            .await
            .expect("delete")
            .expect("found");
        deliver(&f, &[(f.alice, "INBOX")]).await;
        let uids: Vec<i64> = entries(&f, f.alice, "INBOX")
            .await
            .iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(uids, [1, 2, 4]);
        let after = folder(&f, f.alice, "INBOX").await;
        assert_eq!(after.uidvalidity, before.uidvalidity);
        assert!(after.highestmodseq > before.highestmodseq);
        let tombstone: (i64, i64) = {
            let row = sqlx::query("SELECT uid, modseq FROM expunged")
                .fetch_one(f.store.pool())
                .await
                .expect("tombstone");
            (
                row.try_get(0).expect("uid"),
                row.try_get(1).expect("modseq"),
            )
        };
        assert_eq!(tombstone.0, 3);
        assert!(tombstone.1 > before.highestmodseq && tombstone.1 < after.highestmodseq);
    }

    /// Reading a message sets `\Seen` and gives it the folder's next modseq; setting it again
    /// changes nothing about the message.
    #[tokio::test]
    async fn a_flag_change_takes_the_next_modseq_and_a_no_op_keeps_it() {
        let f = fixture().await;
        deliver(&f, &[(f.alice, "INBOX"), (f.alice, "INBOX")]).await;
        let (id, ..) = entries(&f, f.alice, "INBOX").await[0];
        let modseq_of = |id: i64| {
            let pool = f.store.pool().clone();
            async move {
                sqlx::query("SELECT modseq FROM mailbox_entries WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("entry")
                    .try_get::<i64, _>(0)
                    .expect("modseq")
            }
        };
        let start = modseq_of(id).await;
        assert!(
            f.store
                .set_flags(f.alice, &[id], flags::SEEN, 0)
                .await
                .expect("seen")
                == 1
        );
        let read = modseq_of(id).await;
        assert!(read > start);
        assert_eq!(read, folder(&f, f.alice, "INBOX").await.highestmodseq);
        assert_eq!(folder(&f, f.alice, "INBOX").await.unseen, 1);
        assert!(
            f.store
                .set_flags(f.alice, &[id], flags::SEEN, 0)
                .await
                .expect("again")
                == 1
        );
        assert_eq!(modseq_of(id).await, read);
        assert!(
            f.store
                .set_flags(f.alice, &[id], 0, flags::SEEN)
                .await
                .expect("unseen")
                == 1
        );
        assert!(modseq_of(id).await > read);
        // Another user's message is not there.
        assert_eq!(
            f.store
                .set_flags(f.bob, &[id], flags::SEEN, 0)
                .await
                .expect("bob"),
            0
        );
    }

    /// Mail for a folder the user does not have yet creates it in the same commit.
    #[tokio::test]
    async fn a_delivery_to_a_new_folder_creates_it() {
        let f = fixture().await;
        deliver(&f, &[(f.bob, "Lists/rust")]).await;
        let created = folder(&f, f.bob, "Lists/rust").await;
        assert_eq!(
            (created.uidnext, created.messages, created.special_use),
            (2, 1, None)
        );
        let names: Vec<String> = f
            .store
            .list_folders(f.bob)
            .await
            .expect("folders")
            .into_iter()
            .map(|folder| folder.name)
            .collect();
        assert_eq!(names.last().map(String::as_str), Some("Lists/rust"));
    }

    async fn tombstones(f: &Fixture) -> Vec<(i64, i64)> {
        sqlx::query("SELECT folder_id, uid FROM expunged ORDER BY folder_id, uid")
            .fetch_all(f.store.pool())
            .await
            .expect("tombstones")
            .iter()
            .map(|row| {
                (
                    row.try_get(0).expect("folder"),
                    row.try_get(1).expect("uid"),
                )
            })
            .collect()
    }

    #[test]
    fn folder_names_are_checked_and_inbox_is_one_name_in_any_case() {
        assert_eq!(folder_name("inbox").expect("inbox"), "INBOX");
        assert_eq!(folder_name("Inbox/Lists").expect("child"), "INBOX/Lists");
        assert_eq!(
            folder_name("Projects/2026").expect("nested"),
            "Projects/2026"
        );
        assert_eq!(folder_name("Inboxes").expect("other"), "Inboxes");
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a\tb",
            "a*",
            "50%",
            &"x".repeat(201),
        ] {
            assert!(
                matches!(folder_name(bad), Err(StoreError::InvalidFolderName(..))),
                "{bad:?}"
            );
        }
    }

    /// A folder is created, renamed with what is inside it (messages and UIDs go along),
    /// emptied (its UIDs expunged) and deleted; INBOX and a folder with folders inside it
    /// are protected, and a name made again gets a new UIDVALIDITY.
    #[tokio::test]
    async fn folders_are_created_renamed_emptied_and_deleted() {
        let f = fixture().await;
        f.store
            .create_folder(f.alice, "Projects")
            .await
            .expect("create");
        f.store
            .create_folder(f.alice, "Projects/2026")
            .await
            .expect("child");
        assert!(
            matches!(f.store.create_folder(f.alice, "projects").await, Ok(())),
            "names are case-sensitive but INBOX"
        );
        assert!(matches!(
            f.store.create_folder(f.alice, "inbox").await,
            Err(StoreError::AlreadyExists(Record::Folder(name))) if name == "INBOX"
        ));
        deliver(
            &f,
            &[(f.alice, "Projects/2026"), (f.alice, "Projects/2026")],
        )
        .await;
        let before = folder(&f, f.alice, "Projects/2026").await;

        f.store
            .rename_folder(f.alice, "Projects", "Work")
            .await
            .expect("rename");
        let moved = folder(&f, f.alice, "Work/2026").await;
        assert_eq!(
            (moved.uidvalidity, moved.uidnext, moved.messages),
            (before.uidvalidity, 3, 2)
        );
        assert!(!folder_exists(&f, "Projects/2026").await);
        for (from, to) in [("INBOX", "Old"), ("Work", "Work/Inside"), ("Missing", "X")] {
            assert!(
                f.store.rename_folder(f.alice, from, to).await.is_err(),
                "{from} -> {to}"
            );
        }
        assert!(matches!(
            f.store.rename_folder(f.alice, "Work", "projects").await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            f.store.delete_folder(f.alice, "Work").await,
            Err(StoreError::FolderProtected(..))
        ));
        assert!(matches!(
            f.store.delete_folder(f.alice, "INBOX").await,
            Err(StoreError::FolderProtected(..))
        ));

        f.store
            .empty_folder(f.alice, "Work/2026")
            .await
            .expect("empty");
        let emptied = folder(&f, f.alice, "Work/2026").await;
        assert_eq!((emptied.messages, emptied.uidnext), (0, 3));
        assert_eq!(tombstones(&f).await.len(), 2);
        assert_eq!(f.store.count_messages().await.expect("count"), 0);

        f.store
            .delete_folder(f.alice, "Work/2026")
            .await
            .expect("delete");
        assert!(
            tombstones(&f).await.is_empty(),
            "they went with their folder"
        );
        f.store
            .create_folder(f.alice, "Work/2026")
            .await
            .expect("again");
        let again = folder(&f, f.alice, "Work/2026").await;
        assert!(again.uidvalidity > before.uidvalidity, "a new UIDVALIDITY");
        assert_eq!(again.uidnext, 1);
    }

    async fn folder_exists(f: &Fixture, name: &str) -> bool {
        let folders = f.store.list_folders(f.alice).await.expect("folders");
        folders.iter().any(|folder| folder.name == name)
    }

    /// A moved message keeps its id, takes the next UID of its new folder and leaves its old
    /// UID expunged behind.
    #[tokio::test]
    async fn a_moved_message_keeps_its_id_and_gets_the_next_uid_there() {
        let f = fixture().await;
        deliver(
            &f,
            &[(f.alice, "INBOX"), (f.alice, "INBOX"), (f.alice, "Junk")],
        )
        .await;
        let (id, uid, _) = entries(&f, f.alice, "INBOX").await[1];
        f.store
            .move_message(f.alice, id, "Junk")
            .await
            .expect("move");
        let junk = entries(&f, f.alice, "Junk").await;
        assert_eq!(junk.iter().find(|e| e.0 == id).map(|e| e.1), Some(2));
        let inbox = folder(&f, f.alice, "INBOX").await;
        assert_eq!((inbox.messages, inbox.uidnext), (1, 3));
        let junk_id: i64 = sqlx::query("SELECT folder_id FROM mailbox_entries WHERE id = $1")
            .bind(id)
            .fetch_one(f.store.pool())
            .await
            .expect("entry")
            .try_get(0)
            .expect("folder");
        let expunged = tombstones(&f).await;
        assert_eq!(expunged.len(), 1);
        assert!(expunged[0].0 != junk_id && expunged[0].1 == uid);
        assert!(matches!(
            f.store.move_message(f.alice, id, "Nowhere").await,
            Err(StoreError::NotFound(Record::Folder(_)))
        ));
        assert!(matches!(
            f.store.move_message(f.bob, id, "INBOX").await,
            Err(StoreError::NotFound(Record::Message(_)))
        ));
    }
}
