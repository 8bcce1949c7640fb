//! Multi-row statements: one statement per [`ROWS_PER_STATEMENT`] rows instead of one per
//! row, because every statement is a round trip (to the server, or to sqlx's SQLite thread).

/// Most rows in one statement: far below both databases' limits on bound parameters
/// (SQLite 32,766; PostgreSQL 65,535) at the widest row (13).
pub(super) const ROWS_PER_STATEMENT: usize = 256;

/// `$first, $first+1, ...`: `n` parameters, for an `IN (...)` list.
pub(super) fn parameter_list(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    list.join(", ")
}

/// A query on the `Any` driver.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// The statements for `items`: `statement(rows)` per chunk, where `rows` is `row`
/// (parameters `$1`..`$k`) once per item, numbered on from copy to copy; with each, its chunk.
fn statements<'i, T>(
    statement: impl Fn(&str) -> String,
    row: &str,
    items: &'i [T],
) -> impl Iterator<Item = (String, &'i [T])> {
    let width = parameters_in(row);
    items.chunks(ROWS_PER_STATEMENT).map(move |chunk| {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| renumbered(row, i * width))
            .collect();
        (statement(&rows.join(", ")), chunk)
    })
}

/// Runs `statement(rows)` for the items in chunks (see [`statements`]); `bind` binds one
/// item's parameters. Returns the rows affected in all.
pub(super) async fn execute<T>(
    conn: &mut sqlx::AnyConnection,
    statement: impl Fn(&str) -> String,
    row: &str,
    items: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<u64, sqlx::Error> {
    let mut affected = 0;
    for (sql, chunk) in statements(statement, row, items) {
        let query = chunk.iter().fold(sqlx::query(&sql), &bind);
        affected += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(affected)
}

/// Like [`execute`], for statements that return rows (`RETURNING`): all of them, chunk after
/// chunk.
pub(super) async fn fetch<T>(
    conn: &mut sqlx::AnyConnection,
    statement: impl Fn(&str) -> String,
    row: &str,
    items: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut out = Vec::new();
    for (sql, chunk) in statements(statement, row, items) {
        let query = chunk.iter().fold(sqlx::query(&sql), &bind);
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// `INSERT INTO {table} ({columns}) VALUES ` followed by `row` once per item.
pub(super) async fn insert<T>(
    conn: &mut sqlx::AnyConnection,
    table_and_columns: &str,
    row: &str,
    items: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<(), sqlx::Error> {
    let statement = |rows: &str| format!("INSERT INTO {table_and_columns} VALUES {rows}");
    execute(conn, statement, row, items, bind).await?;
    Ok(())
}

/// The highest `$N` in `sql`.
fn parameters_in(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| leading_number(rest).map(|(n, _)| n))
        .max()
        .unwrap_or(0)
}

/// `sql` with every `$N` replaced by `$(N + offset)`.
fn renumbered(sql: &str, offset: usize) -> String {
    let mut parts = sql.split('$');
    let mut out = parts.next().unwrap_or_default().to_string();
    for rest in parts {
        out.push('$');
        match leading_number(rest) {
            Some((n, tail)) => out.push_str(&format!("{}{tail}", n + offset)),
            None => out.push_str(rest),
        }
    }
    out
}

/// The number `text` starts with, and the text after it.
fn leading_number(text: &str) -> Option<(usize, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n = text[..digits].parse().ok()?;
    Some((n, &text[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_numbered_on_from_copy_to_copy() {
        let row = "($1, $2, 'queued', 0, $3, $3)";
        assert_eq!(parameters_in(row), 3);
        assert_eq!(renumbered(row, 0), row);
        assert_eq!(renumbered(row, 3), "($4, $5, 'queued', 0, $6, $6)");
        assert_eq!(renumbered("(x$, $10)", 10), "(x$, $20)");
    }

    #[test]
    fn a_parameter_list_starts_where_it_is_told() {
        assert_eq!(parameter_list(1, 3), "$1, $2, $3");
        assert_eq!(parameter_list(4, 1), "$4");
    }
}
