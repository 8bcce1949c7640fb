-- DKIM key rotation: a domain may have several keys, one per selector. The newest signs; the
-- older ones stay (and stay published) until removed, so mail signed with them still
-- verifies.
CREATE TABLE dkim_keys_by_selector (
    domain TEXT NOT NULL,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (domain, selector)
);

INSERT INTO dkim_keys_by_selector (domain, selector, algorithm, private_key, public_key, created_at)
    SELECT domain, selector, algorithm, private_key, public_key, created_at FROM dkim_keys;

DROP TABLE dkim_keys;

ALTER TABLE dkim_keys_by_selector RENAME TO dkim_keys;
