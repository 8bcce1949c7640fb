-- The remote-delivery queue: one row per (message, remote recipient), in a fixed number of
-- partitions keyed by the recipient's domain. Changes by a partition's owner are fenced by
-- the epoch of its lease in partition_leases.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id),
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    domain TEXT NOT NULL,
    partition INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    delivered_at INTEGER,
    epoch INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX queue_due ON queue (partition, status, next_attempt_at);
CREATE INDEX queue_by_message ON queue (message_id);
CREATE INDEX queue_by_status ON queue (status, id);

CREATE TABLE partition_leases (
    partition INTEGER PRIMARY KEY,
    owner TEXT,
    epoch INTEGER NOT NULL,
    lease_until INTEGER NOT NULL
);

CREATE TABLE dkim_keys (
    domain TEXT PRIMARY KEY,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
