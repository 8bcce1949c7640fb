//! Domains, users, tokens and web sessions: the [`AccountStore`] of [`SqlStore`].

use sqlx::Row;
use sqlx::any::AnyRow;

use super::mailbox::{self, flag, is_unique_violation};
use super::{Dialect, SqlStore, Tx};
use crate::store::{
    AccountStore, Credentials, Domain, Millis, RecipientLookup, Record, StoreError, TokenInfo,
    User, UserChanges, WebSession, now_millis,
};

/// PostgreSQL advisory lock key serialising first-admin creation across replicas.
const FIRST_ADMIN_LOCK: i64 = 0x6d61_6972_7573_0001;

pub(super) const USER_COLUMNS: &str = "id, email, is_admin, quota_bytes, used_bytes, created_at";

impl SqlStore {
    /// Revokes every bearer token and web session of a user.
    pub(super) async fn revoke_credentials(tx: &mut Tx, user_id: i64) -> Result<(), StoreError> {
        for table in ["api_tokens", "web_sessions"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        quota_bytes: row.try_get("quota_bytes")?,
        used_bytes: row.try_get("used_bytes")?,
        created_at: row.try_get("created_at")?,
    })
}

fn domain_of(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

#[async_trait::async_trait]
impl AccountStore for SqlStore {
    async fn add_domain(&self, name: &str) -> Result<Domain, StoreError> {
        let name = name.trim().to_ascii_lowercase();
        let created_at = now_millis();
        match sqlx::query("INSERT INTO domains (name, created_at) VALUES ($1, $2)")
            .bind(&name)
            .bind(created_at)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(Domain { name, created_at }),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(Record::Domain(name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError> {
        let rows = sqlx::query("SELECT name, created_at FROM domains ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Domain {
                    name: r.try_get(0)?,
                    created_at: r.try_get(1)?,
                })
            })
            .collect()
    }

    async fn delete_domain(&self, name: &str) -> Result<(), StoreError> {
        let name = name.trim().to_ascii_lowercase();
        let mut tx = self.begin().await?;
        let users: i64 = sqlx::query(
            "SELECT COUNT(*) FROM users u JOIN domains d ON u.domain_id = d.id WHERE d.name = $1",
        )
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if users > 0 {
            return Err(StoreError::DomainHasUsers {
                domain: name,
                users,
            });
        }
        let done = sqlx::query("DELETE FROM domains WHERE name = $1")
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Record::Domain(name)));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_user(
        &self,
        email: &str,
        password_hash: &str,
        is_admin: bool,
        quota_bytes: Option<i64>,
    ) -> Result<User, StoreError> {
        let email = email.trim().to_ascii_lowercase();
        let domain = domain_of(&email)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| StoreError::NotAnAddress(email.clone()))?;
        let domain_id: Option<i64> = sqlx::query("SELECT id FROM domains WHERE name = $1")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if domain_id.is_none() && !is_admin {
            return Err(StoreError::DomainNotHosted(domain.to_string()));
        }
        let created_at = now_millis();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO users (email, domain_id, password_hash, is_admin, quota_bytes, used_bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6) RETURNING {USER_COLUMNS}"
        ))
        .bind(&email)
        .bind(domain_id)
        .bind(password_hash)
        .bind(flag(is_admin))
        .bind(quota_bytes)
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await;
        let user = match row {
            Ok(row) => user_from_row(&row)?,
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(Record::User(email)));
            }
            Err(e) => return Err(e.into()),
        };
        mailbox::create_standard_folders(&mut tx, user.id).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY email"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn credentials(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"
        ))
        .bind(email.trim().to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Credentials {
                user: user_from_row(&r)?,
                password_hash: r.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    async fn set_password(&self, email: &str, password_hash: &str) -> Result<(), StoreError> {
        let email = email.trim().to_ascii_lowercase();
        let mut tx = self.begin().await?;
        let id: i64 =
            sqlx::query("UPDATE users SET password_hash = $1 WHERE email = $2 RETURNING id")
                .bind(password_hash)
                .bind(&email)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(Record::User(email.to_string())))?
                .try_get(0)?;
        // A token or session outliving a password change would keep a thief signed in.
        Self::revoke_credentials(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_user(&self, email: &str, changes: &UserChanges) -> Result<User, StoreError> {
        let email = email.trim().to_ascii_lowercase();
        let mut tx = self.begin().await?;
        if let Some(quota) = changes.quota_bytes {
            sqlx::query("UPDATE users SET quota_bytes = $1 WHERE email = $2")
                .bind(quota)
                .bind(&email)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(is_admin) = changes.is_admin {
            sqlx::query("UPDATE users SET is_admin = $1 WHERE email = $2")
                .bind(flag(is_admin))
                .bind(&email)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(&email)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(Record::User(email.to_string())))?;
        let user = user_from_row(&row)?;
        tx.commit().await?;
        self.recipients.clear();
        Ok(user)
    }

    async fn delete_user(&self, email: &str) -> Result<Vec<String>, StoreError> {
        let email = email.trim().to_ascii_lowercase();
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(Record::User(email.to_string())))?
            .try_get(0)?;
        let message_ids: Vec<String> =
            sqlx::query("SELECT DISTINCT message_id FROM mailbox_entries WHERE user_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        sqlx::query("DELETE FROM mailbox_entries WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Self::revoke_credentials(&mut tx, id).await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let keys = Self::delete_orphans(&mut tx, &message_ids).await?;
        tx.commit().await?;
        self.recipients.clear();
        Ok(keys)
    }

    async fn admin_exists(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM users WHERE is_admin = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(n > 0)
    }

    async fn create_first_admin(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let email = email.trim().to_ascii_lowercase();
        let mut tx = self.begin().await?;
        // SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL needs a lock, as
        // the check below reads no row that a concurrent insert would conflict on.
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(FIRST_ADMIN_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let admins: i64 = sqlx::query("SELECT COUNT(*) FROM users WHERE is_admin = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if admins > 0 {
            return Ok(false);
        }
        let domain_id: Option<i64> = sqlx::query("SELECT id FROM domains WHERE name = $1")
            .bind(domain_of(&email).unwrap_or_default())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let user_id: i64 = sqlx::query(
            "INSERT INTO users (email, domain_id, password_hash, is_admin, quota_bytes, used_bytes, created_at) \
             VALUES ($1, $2, $3, 1, NULL, 0, $4) RETURNING id",
        )
        .bind(&email)
        .bind(domain_id)
        .bind(password_hash)
        .bind(now_millis())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        mailbox::create_standard_folders(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn add_token(
        &self,
        user_id: i64,
        token_hash: &str,
        name: &str,
        expires_at: Millis,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO api_tokens (user_id, token_hash, name, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(token_hash)
        .bind(name)
        .bind(now_millis())
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    async fn list_tokens(&self, user_id: i64) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, expires_at FROM api_tokens \
             WHERE user_id = $1 AND expires_at > $2 ORDER BY id DESC",
        )
        .bind(user_id)
        .bind(now_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    expires_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn user_by_token(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.email, u.is_admin, u.quota_bytes, u.used_bytes, u.created_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND t.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn add_web_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf_token: &str,
        expires_at: Millis,
    ) -> Result<i64, StoreError> {
        let now = now_millis();
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let id = sqlx::query(
            "INSERT INTO web_sessions \
             (user_id, token_hash, csrf_token, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $4, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(token_hash)
        .bind(csrf_token)
        .bind(now)
        .bind(expires_at)
        .fetch_all(&mut *tx)
        .await?
        .first()
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?
        .try_get(0)?;
        tx.commit().await?;
        Ok(id)
    }

    async fn web_session(
        &self,
        token_hash: &str,
        idle_since: Millis,
        touch_every: Millis,
    ) -> Result<Option<WebSession>, StoreError> {
        let now = now_millis();
        let row = sqlx::query(
            "SELECT u.id, u.email, u.is_admin, u.quota_bytes, u.used_bytes, u.created_at, \
             s.id AS session_id, s.csrf_token, s.last_seen_at, s.expires_at \
             FROM web_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2 AND s.last_seen_at > $3",
        )
        .bind(token_hash)
        .bind(now)
        .bind(idle_since)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = WebSession {
            id: row.try_get("session_id")?,
            user: user_from_row(&row)?,
            csrf_token: row.try_get("csrf_token")?,
            expires_at: row.try_get("expires_at")?,
        };
        let last_seen: Millis = row.try_get("last_seen_at")?;
        if now.saturating_sub(last_seen) >= touch_every {
            sqlx::query("UPDATE web_sessions SET last_seen_at = $1 WHERE id = $2")
                .bind(now)
                .bind(session.id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(session))
    }

    async fn delete_web_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn lookup_recipient(&self, address: &str) -> Result<RecipientLookup, StoreError> {
        let address = address.trim().to_ascii_lowercase();
        let Some(domain) = domain_of(&address) else {
            return Ok(RecipientLookup::NotHosted);
        };
        if let Some(user_id) = self.recipients.get(&address) {
            return Ok(RecipientLookup::Local {
                user_id,
                over_quota: false,
            });
        }
        // No row when the domain is not hosted, NULLs for no user.
        let row = sqlx::query(
            "SELECT u.id, u.quota_bytes, u.used_bytes FROM domains d \
             LEFT JOIN users u ON u.email = $2 WHERE d.name = $1",
        )
        .bind(domain)
        .bind(&address)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(RecipientLookup::NotHosted);
        };
        let Some(user_id) = row.try_get::<Option<i64>, _>(0)? else {
            return Ok(RecipientLookup::UnknownUser);
        };
        let quota: Option<i64> = row.try_get(1)?;
        let used: i64 = row.try_get::<Option<i64>, _>(2)?.unwrap_or_default();
        if quota.is_none() {
            self.recipients.put(address, user_id);
        }
        Ok(RecipientLookup::Local {
            user_id,
            over_quota: quota.is_some_and(|q| used >= q),
        })
    }
}
