//! Every column that holds values sealed under the master key ([`crate::crypto`]), in one
//! registry, and master-key rotation over all of them.
//!
//! A new sealed column is one line in [`SEALED_COLUMNS`]; rotation then re-encrypts it too. A
//! column may hold JSON objects with the sealed value in one of their fields (`field`): rotation
//! re-encrypts that field and keeps the rest of the object.
//! Rotation runs in one write transaction: every value is opened with the old key and sealed
//! again with the new one, or (on any value the old key cannot open) nothing changes.

use diesel::prelude::*;
use diesel::sql_types::Text;

use super::{DbConnection, StoreError, StoreResult};
use crate::crypto::Crypto;

/// A column of sealed values (`NULL` or empty text means none) in a table keyed by `id`; with
/// a `field`, a column of JSON objects whose `field` holds the sealed value (objects without it
/// hold none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub field: Option<&'static str>,
}

/// Every sealed column.
pub const SEALED_COLUMNS: &[SealedColumn] = &[
    // Model providers' API keys.
    SealedColumn {
        table: "models",
        column: "api_key_encrypted",
        field: None,
    },
    // API tools' secret headers.
    SealedColumn {
        table: "tools",
        column: "secrets",
        field: None,
    },
    // Vault credentials' values.
    SealedColumn {
        table: "vault_credentials",
        column: "value_sealed",
        field: None,
    },
    // Digital twins' data-source connection strings.
    SealedColumn {
        table: "twins",
        column: "secrets",
        field: None,
    },
    // Webhooks' signing secrets.
    SealedColumn {
        table: "webhooks",
        column: "secret_encrypted",
        field: None,
    },
    // One-off delivery targets (a simulation's notification webhook): their signing secrets.
    SealedColumn {
        table: "webhook_deliveries",
        column: "target",
        field: Some("secret_encrypted"),
    },
    // Queued simulations' notification secrets, in their jobs' payloads.
    SealedColumn {
        table: "jobs",
        column: "payload",
        field: Some(JOB_SECRET_FIELD),
    },
];

/// The field of a job's payload that holds a sealed secret (a queued simulation's
/// notification secret), which rotation reseals.
pub const JOB_SECRET_FIELD: &str = "secret_sealed";

/// One sealed value and the id of its row.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SealedValue {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub value: String,
}

/// How many values a rotation re-encrypted, per column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rotation {
    pub columns: Vec<(SealedColumn, usize)>,
}

impl Rotation {
    pub fn total(&self) -> usize {
        self.columns.iter().map(|(_, n)| n).sum()
    }
}

/// The column's sealed values, by row id.
pub fn sealed_values(conn: &mut DbConnection, c: SealedColumn) -> StoreResult<Vec<SealedValue>> {
    let mut values = Vec::new();
    for raw in raw_values(conn, c)? {
        if let Some(stored) = Stored::of(c, &raw)? {
            values.push(SealedValue {
                id: raw.id,
                value: stored.sealed,
            });
        }
    }
    Ok(values)
}

/// The column's non-empty values as stored (whole objects for a column with a `field`).
fn raw_values(conn: &mut DbConnection, c: SealedColumn) -> StoreResult<Vec<SealedValue>> {
    // `table` and `column` are constants of the registry, never input.
    let sql = format!(
        "SELECT id, {col} AS value FROM {table} WHERE {col} IS NOT NULL AND {col} <> '' ORDER BY id",
        col = c.column,
        table = c.table
    );
    diesel::sql_query(sql)
        .load::<SealedValue>(conn)
        .map_err(StoreError::from)
}

/// A stored value that holds a sealed value: the sealed value, and for a column with a
/// `field` the object around it.
struct Stored {
    sealed: String,
    object: Option<(&'static str, serde_json::Value)>,
}

impl Stored {
    /// What `raw` holds, if anything (an object without the field holds nothing).
    fn of(c: SealedColumn, raw: &SealedValue) -> StoreResult<Option<Self>> {
        let Some(field) = c.field else {
            return Ok(Some(Self {
                sealed: raw.value.clone(),
                object: None,
            }));
        };
        let object: serde_json::Value = serde_json::from_str(&raw.value).map_err(|e| {
            StoreError::Corrupt(format!(
                "{}.{} of {} is not JSON: {e}; nothing was changed",
                c.table, c.column, raw.id
            ))
        })?;
        let Some(sealed) = object.get(field).and_then(serde_json::Value::as_str) else {
            return Ok(None);
        };
        Ok(Some(Self {
            sealed: sealed.to_string(),
            object: Some((field, object)),
        }))
    }

    /// The value to store with `sealed` in place of the sealed value.
    fn with(self, sealed: String) -> String {
        match self.object {
            None => sealed,
            Some((field, mut object)) => {
                object[field] = serde_json::Value::String(sealed);
                object.to_string()
            }
        }
    }
}

fn write_value(conn: &mut DbConnection, c: SealedColumn, id: &str, value: &str) -> StoreResult<()> {
    let (sql, pg) = (
        format!("UPDATE {} SET {} = ? WHERE id = ?", c.table, c.column),
        format!("UPDATE {} SET {} = $1 WHERE id = $2", c.table, c.column),
    );
    match conn {
        DbConnection::Sqlite(s) => diesel::sql_query(sql)
            .bind::<Text, _>(value)
            .bind::<Text, _>(id)
            .execute(s),
        DbConnection::Postgres(p) => diesel::sql_query(pg)
            .bind::<Text, _>(value)
            .bind::<Text, _>(id)
            .execute(p),
    }?;
    Ok(())
}

/// Re-encrypts every value of every column of `columns` from `old` to `new` in one
/// transaction; a value `old` cannot open aborts it all (naming the table, column and row).
pub fn rotate_columns(
    conn: &mut DbConnection, columns: &[SealedColumn], old: &Crypto, new: &Crypto,
) -> StoreResult<Rotation> {
    super::write_transaction(conn, |conn| {
        let mut rotation = Rotation::default();
        for &c in columns {
            let mut count = 0;
            for raw in raw_values(conn, c)? {
                let Some(stored) = Stored::of(c, &raw)? else {
                    continue;
                };
                let plain = old.decrypt(&stored.sealed).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "{}.{} of {}: {e}; nothing was changed",
                        c.table, c.column, raw.id
                    ))
                })?;
                write_value(conn, c, &raw.id, &stored.with(new.encrypt(&plain)))?;
                count += 1;
            }
            rotation.columns.push((c, count));
        }
        Ok(rotation)
    })
}

/// Re-encrypts every sealed column ([`SEALED_COLUMNS`]) from `old` to `new`.
pub fn rotate_master_key(
    conn: &mut DbConnection, old: &Crypto, new: &Crypto,
) -> StoreResult<Rotation> {
    rotate_columns(conn, SEALED_COLUMNS, old, new)
}
