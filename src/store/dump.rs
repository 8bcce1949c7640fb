//! `mairust db export` and `mairust db import`: a portable, versioned dump of the metadata
//! database, to move an installation from SQLite to PostgreSQL (or back).
//!
//! A dump is a directory with `manifest.json` (format version, schema version, row count per
//! table) and one `<table>.jsonl` file per table, one JSON object per row. Every column is an
//! integer, a string, bytes (`{"base64": "..."}`: message bodies kept in their rows) or null,
//! the same on both databases. The export reads all tables in one
//! read-only transaction (a snapshot: consistent while the server runs). The import runs the
//! target's migrations, refuses a non-empty target unless forced, inserts every table in one
//! transaction, resets PostgreSQL's identity sequences, and verifies the row counts before it
//! commits: it succeeds completely or changes nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{Column, Executor, Row};

use super::sql::{Dialect, SqlStore};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Version of the dump format.
pub const FORMAT_VERSION: u32 = 1;

/// Tables in dependency order (parents first); `id` tables have an identity column.
/// `web_sessions` is left out on purpose: after a move, browsers sign in again.
const TABLES: &[(&str, bool)] = &[
    ("settings", false),
    ("domains", true),
    ("users", true),
    ("api_tokens", true),
    ("messages", false),
    ("folders", true),
    ("mailbox_entries", true),
    ("expunged", false),
    ("queue", true),
    ("delivery_attempts", true),
    ("partition_leases", false),
    ("dkim_keys", false),
];

/// A dump's transaction waits on files between its statements (a large table takes a while
/// to write or read), which the sessions' `idle_in_transaction_session_timeout` would end.
async fn keep_idle_transaction(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        .await
        .map(|_| ())
}

/// `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Dump format version.
    pub format_version: u32,
    /// Latest migration applied in the exported database.
    pub schema_version: i64,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// When the export was taken (RFC 3339).
    pub exported_at: String,
    /// `sqlite` or `postgres`.
    pub source: String,
}

async fn schema_version(conn: &mut sqlx::AnyConnection) -> anyhow::Result<i64> {
    let row = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
        .fetch_one(&mut *conn)
        .await
        .context("cannot read the schema version")?;
    Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
}

fn value_of(row: &sqlx::any::AnyRow, i: usize) -> Value {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    match row.try_get::<Option<Vec<u8>>, _>(i) {
        Ok(Some(bytes)) => serde_json::json!({ BYTES_KEY: B64.encode(bytes) }),
        _ => Value::Null,
    }
}

/// The key of the one-field object a bytes value is written as.
const BYTES_KEY: &str = "base64";

/// Exports the database behind `store` into `dir` (created; must be empty or absent).
pub async fn export(store: &SqlStore, dir: &Path) -> anyhow::Result<Manifest> {
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!("{} is not empty; choose a new directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut conn = store.pool().acquire().await?;
    let begin = match store.dialect() {
        Dialect::Sqlite => "BEGIN",
        Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    conn.execute(begin).await?;
    if store.dialect() == Dialect::Postgres {
        keep_idle_transaction(&mut conn).await?;
    }
    let result = async {
        let schema_version = schema_version(&mut conn).await?;
        let mut tables = BTreeMap::new();
        for (table, has_id) in TABLES {
            let order = if *has_id { " ORDER BY id" } else { "" };
            let rows = sqlx::query(&format!("SELECT * FROM {table}{order}"))
                .fetch_all(&mut *conn)
                .await
                .with_context(|| format!("cannot read table {table}"))?;
            let path = dir.join(format!("{table}.jsonl"));
            let mut out = BufWriter::new(std::fs::File::create(&path)?);
            for row in &rows {
                let mut object = Map::new();
                for (i, column) in row.columns().iter().enumerate() {
                    object.insert(column.name().to_string(), value_of(row, i));
                }
                serde_json::to_writer(&mut out, &Value::Object(object))?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            tables.insert(table.to_string(), rows.len() as u64);
        }
        anyhow::Ok(Manifest {
            format_version: FORMAT_VERSION,
            schema_version,
            tables,
            exported_at: chrono::Utc::now().to_rfc3339(),
            source: format!("{:?}", store.dialect()).to_lowercase(),
        })
    }
    .await;
    let _ = conn.execute("ROLLBACK").await;
    let manifest = result?;
    // The table files are fsynced; their directory entries, then the manifest (written
    // last: a dump with a manifest is complete), then the manifest's entry.
    sync_dir(dir)?;
    write_durably(
        &dir.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// The columns of `table` as the database's schema defines them.
async fn table_columns(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    table: &str,
) -> anyhow::Result<Vec<String>> {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT name FROM pragma_table_info($1) ORDER BY cid",
        Dialect::Postgres => {
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
             WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = $1 ORDER BY ordinal_position"
        }
    };
    let columns = sqlx::query(sql)
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("cannot read the columns of table {table}"))?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?;
    if columns.is_empty() {
        bail!("the target database has no table {table}");
    }
    Ok(columns)
}

/// Writes `bytes` to `path` durably: a temporary file in the same directory, fsynced, then
/// renamed into place.
fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Private like the table files next to it: a dump holds what the database holds.
    let mut file = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Makes the entries of `dir` (new files, renames) durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Imports the dump in `dir` into the (migrated) database behind `store`.
pub async fn import(store: &SqlStore, dir: &Path, force: bool) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("{} has no manifest.json; is it a dump?", dir.display()))?,
    )
    .context("manifest.json is not a valid dump manifest")?;
    if manifest.format_version != FORMAT_VERSION {
        bail!(
            "dump format version {} is not supported (this build reads version {FORMAT_VERSION})",
            manifest.format_version
        );
    }
    let mut tx = store.begin().await?;
    if store.dialect() == Dialect::Postgres {
        keep_idle_transaction(&mut tx).await?;
    }
    let target_version = schema_version(&mut tx).await?;
    if manifest.schema_version > target_version {
        bail!(
            "the dump's schema version {} is newer than this build's {target_version}; upgrade mairust first",
            manifest.schema_version
        );
    }
    let mut existing = 0i64;
    for (table, _) in TABLES {
        let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        existing += n;
    }
    if existing > 0 {
        if !force {
            bail!(
                "the target database is not empty ({existing} rows); import into an empty database or pass --force to replace its contents"
            );
        }
        for (table, _) in TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
    }
    for (table, has_id) in TABLES {
        let path = dir.join(format!("{table}.jsonl"));
        let file = std::fs::File::open(&path)
            .with_context(|| format!("the dump has no {}", path.display()))?;
        let schema = table_columns(&mut tx, store.dialect(), table).await?;
        let mut count = 0u64;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let Value::Object(row) = serde_json::from_str::<Value>(&line)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), n + 1))?
            else {
                bail!("{}:{}: a row must be a JSON object", path.display(), n + 1);
            };
            // Column names in the SQL come from the schema, never from the file: a key that
            // is not a column of the table is an error naming it.
            let unknown: Vec<&str> = row
                .keys()
                .map(String::as_str)
                .filter(|k| !schema.iter().any(|c| c == k))
                .collect();
            if !unknown.is_empty() {
                bail!(
                    "{}:{}: table {table} has no column(s) {}; is this a dump of a MaiRust database?",
                    path.display(),
                    n + 1,
                    unknown
                        .iter()
                        .map(|k| format!("`{}`", k.escape_debug()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            // NULL is written as a literal rather than bound: an untyped NULL takes the
            // column's type on PostgreSQL, where a bound one would need the right Rust type.
            let columns: Vec<&String> = schema.iter().filter(|c| row.contains_key(*c)).collect();
            let mut placeholders = Vec::with_capacity(columns.len());
            let mut bound = Vec::with_capacity(columns.len());
            for column in &columns {
                match &row[*column] {
                    Value::Null => placeholders.push("NULL".to_string()),
                    value => {
                        bound.push((*column, value));
                        placeholders.push(format!("${}", bound.len()));
                    }
                }
            }
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                columns
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (column, value) in bound {
                query = match value {
                    Value::Number(v) => query.bind(v.as_i64().with_context(|| {
                        format!("{}:{}: `{column}` is not an integer", path.display(), n + 1)
                    })?),
                    Value::String(s) => query.bind(s.clone()),
                    Value::Object(o) if o.len() == 1 && o.contains_key(BYTES_KEY) => {
                        let bytes = o[BYTES_KEY]
                            .as_str()
                            .and_then(|b| B64.decode(b).ok())
                            .with_context(|| {
                                format!(
                                    "{}:{}: `{column}` is not valid base64",
                                    path.display(),
                                    n + 1
                                )
                            })?;
                        query.bind(bytes)
                    }
                    other => bail!(
                        "{}:{}: `{column}` has an unsupported value {other}",
                        path.display(),
                        n + 1
                    ),
                };
            }
            query
                .execute(&mut *tx)
                .await
                .with_context(|| format!("{}:{}: insert failed", path.display(), n + 1))?;
            count += 1;
        }
        let expected = manifest.tables.get(*table).copied().unwrap_or(0);
        let stored: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if count != expected || stored as u64 != expected {
            bail!(
                "table {table}: the manifest says {expected} rows, the file has {count}, the database {stored}; nothing was imported"
            );
        }
        if *has_id && store.dialect() == Dialect::Postgres {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            ))
            .fetch_one(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountStore, MailboxStore};

    async fn store(dir: &Path, name: &str) -> SqlStore {
        crate::store::sql::test_sqlite(dir, name).await
    }

    #[tokio::test]
    async fn export_then_import_round_trips_and_refuses_non_empty_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = store(dir.path(), "a").await;
        source.add_domain("example.test").await.expect("domain");
        source
            .add_user("bob@example.test", "hash", false, Some(1000))
            .await
            .expect("user");
        // A message whose body is kept in its row: bytes survive the dump exactly.
        let body: &[u8] = b"Subject: inline\r\n\r\n\x00\xff bytes\r\n";
        let mut message = crate::store::sql::tests::accepted("m1", &"ab".repeat(32));
        message.inline_body = Some(bytes::Bytes::from_static(body));
        let blobs = crate::store::fs::FsBlobStore::open(&dir.path().join("blobs")).expect("fs");
        let committed = source
            .write_batch(&[crate::store::WriteOp::Accept(message)], &blobs)
            .await
            .expect("commit");
        assert!(committed[0].is_ok(), "{committed:?}");
        let dump = dir.path().join("dump");
        let manifest = export(&source, &dump).await.expect("export");
        assert_eq!(manifest.tables["domains"], 1);
        assert_eq!(manifest.tables["users"], 1);
        assert!(manifest.schema_version >= 2);

        let target = store(dir.path(), "b").await;
        import(&target, &dump, false).await.expect("import");
        let users = target.list_users().await.expect("users");
        assert_eq!(users[0].email, "bob@example.test");
        assert_eq!(users[0].quota_bytes, Some(1000));
        assert_eq!(
            target
                .inline_body(&"ab".repeat(32))
                .await
                .expect("read")
                .as_deref(),
            Some(body)
        );
        // New rows continue after the imported ids.
        let carol = target
            .add_user("carol@example.test", "hash", false, None)
            .await
            .expect("new user");
        assert!(carol.id > users[0].id);

        let err = import(&target, &dump, false).await.expect_err("non-empty");
        assert!(err.to_string().contains("not empty"), "{err}");
        import(&target, &dump, true).await.expect("forced");
        assert_eq!(target.list_users().await.expect("users").len(), 1);
        assert!(
            export(&source, &dump).await.is_err(),
            "existing dump directory"
        );
    }

    #[tokio::test]
    async fn unknown_keys_in_a_dump_are_an_error_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = store(dir.path(), "a").await;
        source.add_domain("example.test").await.expect("domain");
        let dump = dir.path().join("dump");
        export(&source, &dump).await.expect("export");
        let domains = dump.join("domains.jsonl");
        let evil = "name) VALUES ('x'); DELETE FROM settings; --";
        let mut row: Map<String, Value> =
            serde_json::from_str(std::fs::read_to_string(&domains).expect("read").trim())
                .expect("row");
        row.insert(evil.into(), Value::from("x"));
        row.insert("colour".into(), Value::from("blue"));
        std::fs::write(&domains, serde_json::to_string(&row).expect("json")).expect("write");
        let target = store(dir.path(), "b").await;
        let err = import(&target, &dump, false)
            .await
            .expect_err("unknown keys");
        let text = err.to_string();
        assert!(
            text.contains("`colour`") && text.contains("DELETE FROM settings"),
            "{text}"
        );
        assert!(text.contains("domains"), "{text}");
        assert!(target.list_domains().await.expect("domains").is_empty());
    }

    #[tokio::test]
    async fn a_damaged_dump_imports_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = store(dir.path(), "a").await;
        source.add_domain("example.test").await.expect("domain");
        source.add_domain("other.test").await.expect("domain");
        let dump = dir.path().join("dump");
        export(&source, &dump).await.expect("export");
        let domains = dump.join("domains.jsonl");
        let text = std::fs::read_to_string(&domains).expect("read");
        std::fs::write(&domains, text.lines().next().unwrap_or_default()).expect("truncate");
        let target = store(dir.path(), "b").await;
        let err = import(&target, &dump, false)
            .await
            .expect_err("count mismatch");
        assert!(err.to_string().contains("domains"), "{err}");
        assert!(target.list_domains().await.expect("domains").is_empty());
    }
}
