-- Bodies up to storage.inline_max_bytes are kept in their message's row, written in the same
-- transaction as the rest of the message (one WAL flush for the whole group commit). NULL: the
-- body is in the blob store under blob_key.
ALTER TABLE messages ADD COLUMN body BYTEA;
