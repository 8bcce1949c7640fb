-- PostgreSQL's 0009 switches inline bodies to lz4. SQLite has no column compression; this
-- version exists so both dialects share one schema version (a dump carries it, and an import
-- refuses a dump newer than its target).
SELECT 1;
