//! The account rules every interface calls: the REST API, the CLI and the bootstrap admin
//! (and, later, IMAP). What makes an address, a domain name or a password acceptable, how an
//! address given by a caller is normalised, and the checks a new account passes (a hosted
//! domain, a quota that is not negative) live here once, so no interface skips one.

use std::path::Path;

use crate::auth;
use crate::store::{AccountStore, StoreError, User};

/// In `server.data_dir`: the first admin's generated password, written when no admin password
/// is configured, and deleted when that account's password changes.
pub const GENERATED_PASSWORD_FILE: &str = "initial-admin-password";

/// Longest address accepted (RFC 5321 §4.5.3.1.3 path limit less the brackets).
pub const MAX_EMAIL: usize = 254;
/// Longest domain name accepted (a trailing dot included).
pub const MAX_DOMAIN: usize = 255;
/// Shortest password accepted, in characters.
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted (argon2 input; longer adds nothing).
pub const MAX_PASSWORD: usize = 1024;

/// Why an account change was refused. Every kind but `Store` and `Hash` is the caller's to
/// fix, and its text says how.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not `local@domain`, or with spaces, control characters or specials in the local part.
    #[error("`{0}` is not a valid email address")]
    InvalidEmail(String),
    /// Not letters, digits and hyphens in dot-separated labels (RFC 1035).
    #[error("`{0}` is not a valid domain name")]
    InvalidDomain(String),
    /// A password outside the rules.
    #[error("{0}")]
    InvalidPassword(&'static str),
    /// A field over its length limit.
    #[error("`{field}` is too long (at most {max} characters)")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
    /// A negative quota.
    #[error("quota_bytes must not be negative")]
    NegativeQuota,
    /// A user (not an administrator) outside the hosted domains.
    #[error("domain {0} is not hosted here; add it first")]
    DomainNotHosted(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing the password failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// An address as the store keys it: surrounding white space dropped, lower case. Every
/// address a caller names (a URL path, a CLI argument) goes through it before it is compared
/// with another (`%20admin@...` is `admin@...`).
pub fn normalize_address(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), AccountError> {
    if value.chars().count() > max {
        return Err(AccountError::TooLong { field, max });
    }
    Ok(())
}

/// Checks a domain name (RFC 1035 letters, digits, hyphens; dots between labels) and returns
/// it in lower case without a trailing dot.
pub fn validate_domain(name: &str) -> Result<String, AccountError> {
    check_len("name", name, MAX_DOMAIN)?;
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(name)
    } else {
        Err(AccountError::InvalidDomain(name))
    }
}

/// Checks an email address (`local@domain`, no spaces or control characters) and returns it
/// in lower case.
pub fn validate_email(email: &str) -> Result<String, AccountError> {
    check_len("email", email, MAX_EMAIL)?;
    let email = email.to_ascii_lowercase();
    let invalid = || AccountError::InvalidEmail(email.clone());
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    if local.is_empty()
        || local.len() > 64
        || local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"@".contains(c))
    {
        return Err(invalid());
    }
    validate_domain(domain).map_err(|_| invalid())?;
    Ok(email)
}

/// Checks a new password: 8 to 1024 characters, no control characters.
pub fn validate_password(password: &str) -> Result<(), AccountError> {
    check_len("password", password, MAX_PASSWORD)?;
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::InvalidPassword(
            "password must be at least 8 characters",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(AccountError::InvalidPassword(
            "password must not contain control characters",
        ));
    }
    Ok(())
}

/// An account to create.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    /// Its address.
    pub email: &'a str,
    /// Its password, in clear (hashed here).
    pub password: &'a str,
    /// An administrator (who may live outside the hosted domains).
    pub is_admin: bool,
    /// Mailbox quota in bytes; `None` is unlimited.
    pub quota_bytes: Option<i64>,
}

/// Creates an account after every check: a valid address, a valid password, a quota that is
/// not negative, and (for users) a hosted domain.
pub async fn add_user(
    accounts: &dyn AccountStore,
    account: NewAccount<'_>,
) -> Result<User, AccountError> {
    let email = validate_email(account.email)?;
    validate_password(account.password)?;
    if account.quota_bytes.is_some_and(|q| q < 0) {
        return Err(AccountError::NegativeQuota);
    }
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    if !account.is_admin
        && !accounts
            .list_domains()
            .await?
            .iter()
            .any(|d| d.name == domain)
    {
        return Err(AccountError::DomainNotHosted(domain.to_string()));
    }
    let hashed = hash(account.password).await?;
    Ok(accounts
        .add_user(&email, &hashed, account.is_admin, account.quota_bytes)
        .await?)
}

/// Sets an account's password after checking it (which revokes the account's tokens and
/// sessions in the store). If the generated first-admin password in `data_dir` was this
/// account's, the file goes too: it no longer opens anything and should not lie around.
pub async fn set_password(
    accounts: &dyn AccountStore,
    data_dir: &Path,
    email: &str,
    password: &str,
) -> Result<(), AccountError> {
    validate_password(password)?;
    let email = normalize_address(email);
    let file = data_dir.join(GENERATED_PASSWORD_FILE);
    // Whose password the file holds is known only before the change.
    let generated = match std::fs::read_to_string(&file) {
        Ok(on_file) => match accounts.credentials(&email).await? {
            Some(creds) => auth::verify_password_async(on_file.trim(), &creds.password_hash).await,
            None => false,
        },
        Err(_) => false,
    };
    let hashed = hash(password).await?;
    accounts.set_password(&email, &hashed).await?;
    if generated {
        match std::fs::remove_file(&file) {
            Ok(()) => {
                tracing::info!(user = %email, file = %file.display(), "the generated first password was changed; its file is deleted")
            }
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "cannot delete the generated password's file; delete it yourself")
            }
        }
    }
    Ok(())
}

/// Hashes a password on the blocking pool, taking an argon2 slot like every check.
pub async fn hash(password: &str) -> Result<String, AccountError> {
    auth::hash_password_async(password)
        .await
        .map_err(AccountError::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_normalized() {
        assert_eq!(
            validate_domain("Example.COM.").expect("valid"),
            "example.com"
        );
        assert!(validate_domain("bad_domain.com").is_err());
        assert!(validate_domain("-x.com").is_err());
        assert!(validate_domain("a..b").is_err());
        assert_eq!(
            validate_email("Bob@Example.test").expect("valid"),
            "bob@example.test"
        );
        assert!(validate_email("no-at-sign").is_err());
        assert!(validate_email("a b@example.test").is_err());
        assert!(validate_email(" adm@example.test").is_err());
        assert!(validate_email("a@b@example.test").is_err());
        assert!(validate_email("x@bad domain").is_err());
        assert_eq!(normalize_address(" Adm2@Hosted.test\t"), "adm2@hosted.test");
    }

    #[test]
    fn passwords_follow_the_rules() {
        assert!(validate_password("long enough").is_ok());
        assert!(matches!(
            validate_password("short"),
            Err(AccountError::InvalidPassword(_))
        ));
        assert!(matches!(
            validate_password("with\ttab!"),
            Err(AccountError::InvalidPassword(_))
        ));
        assert!(matches!(
            validate_password(&"x".repeat(MAX_PASSWORD + 1)),
            Err(AccountError::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn new_accounts_pass_every_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::sql::test_sqlite(dir.path(), "accounts").await;
        store.add_domain("hosted.test").await.expect("domain");
        let account = |email, password, quota| NewAccount {
            email,
            password,
            is_admin: false,
            quota_bytes: quota,
        };
        let user = add_user(&store, account("Bob@Hosted.test", "password-1", Some(10)))
            .await
            .expect("added");
        assert_eq!(user.email, "bob@hosted.test");
        assert!(matches!(
            add_user(&store, account("c@elsewhere.test", "password-1", None)).await,
            Err(AccountError::DomainNotHosted(d)) if d == "elsewhere.test"
        ));
        assert!(matches!(
            add_user(&store, account("c@hosted.test", "password-1", Some(-1))).await,
            Err(AccountError::NegativeQuota)
        ));
        assert!(matches!(
            add_user(&store, account("c@hosted.test", "short", None)).await,
            Err(AccountError::InvalidPassword(_))
        ));
        let admin = NewAccount {
            is_admin: true,
            ..account("root@admin.test", "root-password-1", None)
        };
        assert!(add_user(&store, admin).await.is_ok());
        assert!(matches!(
            set_password(&store, dir.path(), " BOB@hosted.test", "tiny").await,
            Err(AccountError::InvalidPassword(_))
        ));
        // The generated password on file is root's: bob's change leaves it, root's removes it.
        let file = dir.path().join(GENERATED_PASSWORD_FILE);
        std::fs::write(&file, "root-password-1\n").expect("write");
        set_password(&store, dir.path(), " BOB@hosted.test", "password-2")
            .await
            .expect("set");
        assert!(file.exists());
        set_password(&store, dir.path(), "root@admin.test", "password-3")
            .await
            .expect("set");
        assert!(!file.exists());
    }
}
