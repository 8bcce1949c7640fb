//! DKIM keys' SQL: the [`DkimKeyStore`] half of [`SqlStore`].

use sqlx::Row;

use super::SqlStore;
use crate::store::dkim_keys::{DkimKeyRecord, DkimKeyStore, signing_subset};
use crate::store::{Record, StoreError};

#[async_trait::async_trait]
impl DkimKeyStore for SqlStore {
    async fn put_dkim_key(&self, key: &DkimKeyRecord) -> Result<(), StoreError> {
        // A key never replaces another: mail signed with the old one must go on verifying
        // while its record is published.
        let result = sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.domain)
        .bind(&key.selector)
        .bind(&key.algorithm)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(key.created_at)
        .execute(self.pool())
        .await;
        self.signing_keys.clear();
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StoreError::AlreadyExists(Record::DkimKey {
                    domain: key.domain.clone(),
                    selector: key.selector.clone(),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn signing_keys(&self, domain: &str) -> Result<Vec<DkimKeyRecord>, StoreError> {
        let domain = domain.to_ascii_lowercase();
        if let Some(keys) = self.signing_keys.get(&domain) {
            return Ok(keys);
        }
        let keys = signing_subset(self.dkim_keys(&domain).await?);
        self.signing_keys.put(domain, keys.clone());
        Ok(keys)
    }

    async fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, selector, algorithm, private_key, public_key, created_at \
             FROM dkim_keys WHERE domain = $1 ORDER BY created_at DESC, selector DESC",
        )
        .bind(domain.to_ascii_lowercase())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DkimKeyRecord {
                    domain: r.try_get(0)?,
                    selector: r.try_get(1)?,
                    algorithm: r.try_get(2)?,
                    private_key: r.try_get(3)?,
                    public_key: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2")
            .bind(domain.to_ascii_lowercase())
            .bind(selector)
            .execute(self.pool())
            .await?;
        self.signing_keys.clear();
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Record::DkimKey {
                domain: domain.to_ascii_lowercase(),
                selector: selector.to_string(),
            }));
        }
        Ok(())
    }
}
