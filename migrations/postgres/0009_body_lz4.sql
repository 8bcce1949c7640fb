-- Inline bodies are compressed with lz4 instead of pglz (PostgreSQL 14+ built with lz4, as
-- Debian's and the official images are): pglz took a third of the CPU of accepting 64 KiB
-- messages. Only values written from now on change; where lz4 is missing, pglz stays.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE messages ALTER COLUMN body SET COMPRESSION lz4';
EXCEPTION
    WHEN feature_not_supported OR syntax_error THEN
        RAISE NOTICE 'lz4 is not available; message bodies stay compressed with pglz';
END
$$;
