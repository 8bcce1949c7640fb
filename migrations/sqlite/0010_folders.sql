-- Folders (IMAP mailboxes) per user, and per message in a folder: its UID, flags, keywords and
-- modification sequence (RFC 9051, RFC 7162). Flags are a bit set: 1 \Seen, 2 \Answered,
-- 4 \Flagged, 8 \Deleted, 16 \Draft; keywords are space-separated.
CREATE TABLE folders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,
    subscribed INTEGER NOT NULL DEFAULT 1,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, name)
);

-- Expunged messages' UIDs with the modification sequence of their expunge, so a client that
-- resynchronises (QRESYNC) learns which messages vanished.
CREATE TABLE expunged (
    folder_id INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (folder_id, uid)
);

-- Every existing user gets the standard folders, and keeps any other folder that holds mail.
INSERT INTO folders (user_id, name, special_use, uidvalidity, created_at)
SELECT u.id, s.name, s.special_use, CAST(strftime('%s', 'now') AS INTEGER),
       CAST(strftime('%s', 'now') AS INTEGER) * 1000
FROM users u CROSS JOIN (
    SELECT 'INBOX' AS name, NULL AS special_use
    UNION ALL SELECT 'Sent', '\Sent'
    UNION ALL SELECT 'Drafts', '\Drafts'
    UNION ALL SELECT 'Junk', '\Junk'
    UNION ALL SELECT 'Trash', '\Trash'
    UNION ALL SELECT 'Archive', '\Archive'
) s;
INSERT INTO folders (user_id, name, uidvalidity, created_at)
SELECT DISTINCT e.user_id, e.folder, CAST(strftime('%s', 'now') AS INTEGER),
       CAST(strftime('%s', 'now') AS INTEGER) * 1000
FROM mailbox_entries e
WHERE NOT EXISTS (SELECT 1 FROM folders f WHERE f.user_id = e.user_id AND f.name = e.folder);

-- The entries move to a table keyed by folder; UIDs follow arrival order, and the read state
-- becomes the \Seen flag.
CREATE TABLE mailbox_entries_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    folder_id INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL DEFAULT 1,
    flags INTEGER NOT NULL DEFAULT 0,
    keywords TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL REFERENCES messages(id),
    created_at INTEGER NOT NULL
);
INSERT INTO mailbox_entries_new (id, user_id, folder_id, uid, flags, message_id, created_at)
SELECT e.id, e.user_id, f.id, ROW_NUMBER() OVER (PARTITION BY f.id ORDER BY e.id),
       CASE WHEN e.seen <> 0 THEN 1 ELSE 0 END, e.message_id, e.created_at
FROM mailbox_entries e JOIN folders f ON f.user_id = e.user_id AND f.name = e.folder;
-- Entry ids are the API's message ids: a deleted one is never handed out again.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'mailbox_entries_new', seq FROM sqlite_sequence WHERE name = 'mailbox_entries';
DROP TABLE mailbox_entries;
ALTER TABLE mailbox_entries_new RENAME TO mailbox_entries;
CREATE UNIQUE INDEX mailbox_entries_by_uid ON mailbox_entries (folder_id, uid);
CREATE INDEX mailbox_entries_by_user ON mailbox_entries (user_id, id);
CREATE INDEX mailbox_entries_by_message ON mailbox_entries (message_id);
UPDATE folders SET uidnext = 1 + COALESCE(
    (SELECT MAX(uid) FROM mailbox_entries e WHERE e.folder_id = folders.id), 0);
