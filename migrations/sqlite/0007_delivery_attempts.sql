-- Each delivery attempt of a queue row, for the message trace; written in the transaction
-- of the row's update by the partition owner (fenced by its lease epoch), deleted with the
-- row by the purger.
CREATE TABLE delivery_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id INTEGER NOT NULL REFERENCES queue(id),
    attempted_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    node TEXT NOT NULL
);

CREATE INDEX delivery_attempts_by_queue ON delivery_attempts (queue_id, id);

-- The trace finds a message by its Message-ID header.
CREATE INDEX messages_by_message_id ON messages (message_id);
