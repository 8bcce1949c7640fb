//! Who a recipient is: a local user's mailbox (with RFC 5321's postmaster rule), a remote
//! address this client may relay to, or a refusal whose kind each way in answers in its own
//! words (an SMTP reply at `RCPT TO`, an HTTP status for the API's send). The first stage of
//! the inbound pipeline, before the checks and the commit.

use std::sync::Arc;

use crate::config::Config;
use crate::store::{AccountStore, RecipientLookup, StoreError};

/// Where a recipient's mail goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// This user's mailbox.
    Local(i64),
    /// The delivery queue.
    Remote,
}

/// Why a recipient is refused.
#[derive(Debug, thiserror::Error)]
pub enum RecipientRefusal {
    /// The user's mailbox is over its quota (temporary: it may be emptied).
    #[error("mailbox of {0} is full")]
    MailboxFull(String),
    /// A hosted domain has no such user.
    #[error("{0} does not exist in its hosted domain")]
    UnknownUser(String),
    /// The domain is not hosted here and this client may not relay.
    #[error("relaying to {0} is not allowed")]
    RelayDenied(String),
    /// Mail to `postmaster` has no mailbox to go to (an operator's mistake).
    #[error("no mailbox for postmaster; set smtp.postmaster to a local user")]
    NoPostmaster,
    /// The lookup failed (temporary).
    #[error("recipient lookup failed: {0}")]
    Lookup(#[from] StoreError),
}

/// Resolves recipients against the hosted domains and users.
#[derive(Clone)]
pub struct Recipients {
    config: Arc<Config>,
    accounts: Arc<dyn AccountStore>,
}

impl Recipients {
    /// A resolver over `accounts`, with the postmaster settings of `config`.
    pub fn new(config: Arc<Config>, accounts: Arc<dyn AccountStore>) -> Self {
        Self { config, accounts }
    }

    /// Where mail to `address` goes; `may_relay` says whether this client may send to
    /// domains not hosted here (submission after AUTH, a trusted network, the API).
    pub async fn resolve(
        &self,
        address: &str,
        may_relay: bool,
    ) -> Result<Recipient, RecipientRefusal> {
        let lookup = self.accounts.lookup_recipient(address).await?;
        // RFC 5321 §4.5.1: bare <postmaster> and postmaster@ every hosted domain MUST be
        // accepted; a real user of that name keeps their own mail.
        let postmaster = match &lookup {
            RecipientLookup::NotHosted => address.eq_ignore_ascii_case("postmaster"),
            RecipientLookup::UnknownUser => address
                .split_once('@')
                .is_some_and(|(local, _)| local.eq_ignore_ascii_case("postmaster")),
            RecipientLookup::Local { .. } => false,
        };
        if postmaster {
            return self
                .postmaster_mailbox()
                .await?
                .map(Recipient::Local)
                .ok_or(RecipientRefusal::NoPostmaster);
        }
        match lookup {
            RecipientLookup::Local {
                over_quota: true, ..
            } => Err(RecipientRefusal::MailboxFull(address.to_string())),
            RecipientLookup::Local { user_id, .. } => Ok(Recipient::Local(user_id)),
            RecipientLookup::UnknownUser => Err(RecipientRefusal::UnknownUser(address.to_string())),
            RecipientLookup::NotHosted if may_relay => Ok(Recipient::Remote),
            RecipientLookup::NotHosted => Err(RecipientRefusal::RelayDenied(address.to_string())),
        }
    }

    /// The user who receives mail to `postmaster`: `smtp.postmaster`, else `admin.email`, else
    /// the oldest admin account.
    async fn postmaster_mailbox(&self) -> Result<Option<i64>, StoreError> {
        let config = &self.config;
        match config
            .smtp
            .postmaster
            .as_ref()
            .or(config.admin.email.as_ref())
        {
            Some(address) => Ok(self.accounts.credentials(address).await?.map(|c| c.user.id)),
            None => Ok(self
                .accounts
                .list_users()
                .await?
                .into_iter()
                .filter(|u| u.is_admin)
                .min_by_key(|u| (u.created_at, u.id))
                .map(|u| u.id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn recipients(postmaster: Option<&str>) -> (tempfile::TempDir, Recipients) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(crate::store::sql::test_sqlite(dir.path(), "r").await);
        store.add_domain("example.org").await.expect("domain");
        store
            .add_user("admin@example.org", "x", true, None)
            .await
            .expect("admin");
        store
            .add_user("bob@example.org", "x", false, None)
            .await
            .expect("bob");
        store
            .add_user("full@example.org", "x", false, Some(0))
            .await
            .expect("full");
        let mut config = Config::default();
        config.smtp.postmaster = postmaster.map(str::to_string);
        (dir, Recipients::new(Arc::new(config), store))
    }

    async fn id_of(r: &Recipients, email: &str) -> i64 {
        r.accounts
            .credentials(email)
            .await
            .expect("lookup")
            .expect("user")
            .user
            .id
    }

    #[tokio::test]
    async fn users_remote_addresses_and_refusals() {
        let (_dir, r) = recipients(None).await;
        let bob = id_of(&r, "bob@example.org").await;
        assert_eq!(
            r.resolve("Bob@Example.org", false).await.expect("bob"),
            Recipient::Local(bob)
        );
        assert!(matches!(
            r.resolve("full@example.org", false).await,
            Err(RecipientRefusal::MailboxFull(_))
        ));
        assert!(matches!(
            r.resolve("nobody@example.org", true).await,
            Err(RecipientRefusal::UnknownUser(_))
        ));
        assert!(matches!(
            r.resolve("someone@elsewhere.test", false).await,
            Err(RecipientRefusal::RelayDenied(_))
        ));
        assert_eq!(
            r.resolve("someone@elsewhere.test", true)
                .await
                .expect("relay"),
            Recipient::Remote
        );
    }

    /// RFC 5321 §4.5.1: `postmaster` and postmaster@ each hosted domain always have a mailbox:
    /// `smtp.postmaster`, else the first admin.
    #[tokio::test]
    async fn postmaster_always_has_a_mailbox() {
        let (_dir, r) = recipients(None).await;
        let admin = id_of(&r, "admin@example.org").await;
        for address in ["postmaster", "PostMaster@example.org"] {
            assert_eq!(
                r.resolve(address, false).await.expect(address),
                Recipient::Local(admin)
            );
        }
        let (_dir, r) = recipients(Some("bob@example.org")).await;
        let bob = id_of(&r, "bob@example.org").await;
        assert_eq!(
            r.resolve("postmaster@example.org", false)
                .await
                .expect("pm"),
            Recipient::Local(bob)
        );
        let (_dir, r) = recipients(Some("gone@example.org")).await;
        assert!(matches!(
            r.resolve("postmaster", false).await,
            Err(RecipientRefusal::NoPostmaster)
        ));
    }
}
