-- The admin dashboard's counts of the last hour and of deferred mail by domain read these
-- indexes, not the retained history.
CREATE INDEX messages_by_received ON messages (received_at);
CREATE INDEX queue_by_status_updated ON queue (status, updated_at);
CREATE INDEX queue_pending_by_domain ON queue (status, domain)
    WHERE status IN ('queued', 'deferred');
