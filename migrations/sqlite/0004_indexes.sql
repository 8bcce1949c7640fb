-- Reference checks before a body is deleted look messages up by blob key.
CREATE INDEX messages_by_blob ON messages (blob_key);

-- Pending rows only: the scheduler's per-domain selection reads
-- this index, whose size follows the pending mail, not the retained history.
CREATE INDEX queue_pending ON queue (partition, status, domain, next_attempt_at, id)
    WHERE status IN ('queued', 'deferred');
