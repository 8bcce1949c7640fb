-- DKIM key rotation: a domain may have several keys, one per selector. The newest signs; the
-- older ones stay (and stay published) until removed, so mail signed with them still
-- verifies.
ALTER TABLE dkim_keys DROP CONSTRAINT dkim_keys_pkey;

ALTER TABLE dkim_keys ADD PRIMARY KEY (domain, selector);
