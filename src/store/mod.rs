//! Storage: message metadata in a SQL database and message bodies in a blob store.
//!
//! The two halves meet in the acceptance path: a body is written (and fsynced) to the blob
//! store first, then its metadata is committed; only then does SMTP answer `250`. A crash in
//! between leaves at worst an unreferenced blob, never a reference to a missing body.

pub mod blob;
pub mod blob_migrate;
pub mod crypto;
pub mod dkim_keys;
pub mod dump;
pub mod encrypted;
pub mod fs;
pub mod inline;
pub mod queue;
pub mod rekey;
pub mod s3;
pub mod sql;

use std::sync::Arc;

use serde::Serialize;

pub use blob::{BlobError, BlobStore, blob_key};
pub use dkim_keys::{DkimKeyRecord, DkimKeyStore};
pub use queue::{
    ATTEMPT_DETAIL_MAX, Activity, Attempt, AttemptRecord, EntryUpdate, Lease, LeaseGrant,
    LeaseInfo, QueueEntry, QueueFilter, QueueStatus, QueueStore, TraceMessage, partition_of,
};
pub use sql::SqlStore;

use crate::config::{Config, StorageBackend};

/// Milliseconds since the Unix epoch, the one time format stored.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// A unique, roughly time-ordered id: 12 hex digits of milliseconds and 8 random.
pub fn new_id() -> String {
    format!(
        "{:012x}{:08x}",
        now_millis() & 0xffff_ffff_ffff,
        rand::random::<u32>()
    )
}

/// A stored record an error is about, named the way an operator would look it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A hosted domain, by name.
    Domain(String),
    /// A user, by address.
    User(String),
    /// One of a user's folders, by name.
    Folder(String),
    /// A message in a user's mailbox, by id.
    Message(i64),
    /// A DKIM key, by domain and selector.
    DkimKey {
        /// The signing domain.
        domain: String,
        /// The selector.
        selector: String,
    },
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Record::Domain(name) => write!(f, "domain {name}"),
            Record::User(email) => write!(f, "user {email}"),
            Record::DkimKey { domain, selector } => {
                write!(f, "DKIM selector {selector} of {domain}")
            }
            Record::Folder(name) => write!(f, "folder {name}"),
            Record::Message(id) => write!(f, "message {id}"),
        }
    }
}

/// Why a metadata operation failed. Callers branch on the kind: the API answers 409 for
/// [`StoreError::AlreadyExists`] and [`StoreError::DomainHasUsers`], 404 for
/// [`StoreError::NotFound`], 400 for the bad-request kinds, and 503 for the backend's own
/// failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is already taken.
    #[error("{0} already exists")]
    AlreadyExists(Record),
    /// The named record does not exist.
    #[error("{0} not found")]
    NotFound(Record),
    /// A domain cannot be removed while users remain in it.
    #[error("domain {domain} still has {users} user(s); delete them first")]
    DomainHasUsers {
        /// The domain.
        domain: String,
        /// How many users it still has.
        users: i64,
    },
    /// The text given as an address has no domain part.
    #[error("`{0}` is not an email address")]
    NotAnAddress(String),
    /// A user's domain must be hosted here first (only the bootstrap admin is exempt).
    #[error("domain {0} is not hosted here; add it first")]
    DomainNotHosted(String),
    /// A folder name that cannot be used, and why.
    #[error("folder name `{0}` {1}")]
    InvalidFolderName(String, &'static str),
    /// A folder that cannot be renamed or deleted, and why.
    #[error("folder {0} {1}")]
    FolderProtected(String, &'static str),
    /// A listing's cursor is not one a previous page returned.
    #[error("invalid cursor `{0}`: pass the next_cursor of the previous page")]
    InvalidCursor(String),
    /// The configured partition count differs from the one the database was created with.
    #[error(
        "queue.partitions is {configured} but the database was created with {stored}; \
         the partition count cannot change once mail is queued"
    )]
    PartitionCountChanged {
        /// `queue.partitions` from the configuration.
        configured: u32,
        /// The count stored in the database.
        stored: String,
    },
    /// The database cannot be opened as configured: a malformed URL, a directory that
    /// cannot be created, a server that does not answer. The text says which and what to fix.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The partition's lease is no longer held with this epoch: another node took over.
    #[error(
        "lease on partition {partition} lost: another owner (or a newer epoch) holds it, so \
         nothing was changed; the current owner retries the rows"
    )]
    LeaseLost {
        /// The partition.
        partition: u32,
    },
    /// Schema migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A message's body is not (or no longer) in the blob store, so its metadata was not
    /// committed: an unreferenced body may have been deleted between its write and the
    /// commit. The writer of the body retries.
    #[error("message body {0} is missing from the blob store; store it again and retry")]
    BlobMissing(String),
}

/// A hosted domain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Domain {
    /// Domain name, lower case.
    pub name: String,
    /// Creation time (RFC 3339 in the API, like every time it shows).
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
}

/// A time as the API shows every time: RFC 3339, UTC, to the second.
fn as_rfc3339<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&rfc3339(*ms))
}

/// A [`Millis`] as RFC 3339 text, to the second.
pub fn rfc3339(ms: Millis) -> String {
    rfc3339_as(ms, chrono::SecondsFormat::Secs)
}

/// A [`Millis`] as RFC 3339 text with milliseconds (lease times, where a second is a
/// quarter of a lease).
pub fn rfc3339_millis(ms: Millis) -> String {
    rfc3339_as(ms, chrono::SecondsFormat::Millis)
}

fn rfc3339_as(ms: Millis, format: chrono::SecondsFormat) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(format, true)
}

/// An account.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    /// Internal id.
    #[serde(skip)]
    pub id: i64,
    /// Login and mailbox address, lower case.
    pub email: String,
    /// May manage domains, users and the queue.
    pub is_admin: bool,
    /// Mailbox quota; `None` is unlimited.
    pub quota_bytes: Option<i64>,
    /// Bytes currently stored for this user.
    pub used_bytes: i64,
    /// Creation time (RFC 3339 in the API).
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// New quota: `Some(None)` is unlimited.
    pub quota_bytes: Option<Option<i64>>,
    /// New admin flag.
    pub is_admin: Option<bool>,
}

/// A bearer token as its owner may see it (never the secret, which is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Token id, for revocation.
    pub id: i64,
    /// The owner's label.
    pub name: String,
    /// Creation time.
    pub created_at: Millis,
    /// Expiry time.
    pub expires_at: Millis,
}

/// A signed-in browser session of the web UI, found by its cookie.
#[derive(Debug, Clone)]
pub struct WebSession {
    /// Session id.
    pub id: i64,
    /// Whose session it is.
    pub user: User,
    /// What the page must echo in `X-CSRF-Token` on every state change.
    pub csrf_token: String,
    /// When it ends whatever the activity.
    pub expires_at: Millis,
}

/// A user together with their password hash, for authentication.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The account.
    pub user: User,
    /// PHC-format argon2id hash.
    pub password_hash: String,
}

/// What a recipient address resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientLookup {
    /// An existing user of a hosted domain.
    Local {
        /// The user's id.
        user_id: i64,
        /// Whether the mailbox is at or over its quota.
        over_quota: bool,
    },
    /// The domain is hosted but has no such user.
    UnknownUser,
    /// The domain is not hosted here.
    NotHosted,
}

/// The header fields the API lists, parsed once at acceptance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageSummary {
    /// `From:` as display text.
    pub from: String,
    /// `To:` addresses as display text.
    pub to: Vec<String>,
    /// `Cc:` addresses as display text.
    pub cc: Vec<String>,
    /// Decoded `Subject:`.
    pub subject: String,
    /// `Date:` in ms since the epoch, if present and valid.
    pub date: Option<Millis>,
    /// `Message-ID:` without angle brackets.
    pub message_id: Option<String>,
    /// Whether any MIME part is an attachment.
    pub has_attachments: bool,
}

/// A message ready for its metadata commit: its body is either durable in the blob store
/// already or carried in `inline_body`, made durable by the same commit.
#[derive(Debug, Clone)]
pub struct AcceptedMessage {
    /// Acceptance id (shown in the 250 reply and the Received header).
    pub id: String,
    /// Content address of the body.
    pub blob_key: String,
    /// The body as stored (sealed when a master key is set), kept in the message's row;
    /// `None`: the body is in the blob store under `blob_key`.
    pub inline_body: Option<bytes::Bytes>,
    /// Body size in bytes.
    pub size: i64,
    /// Acceptance time.
    pub received_at: Millis,
    /// SMTP envelope sender (empty for the null sender).
    pub envelope_from: String,
    /// Parsed header fields.
    pub summary: MessageSummary,
    /// The local copies: one mailbox entry each (a recipient's INBOX, the submitter's Sent).
    pub deliveries: Vec<LocalDelivery>,
    /// Recipients in other domains: one queue row each.
    pub remote_recipients: Vec<RemoteRecipient>,
    /// When undelivered queue rows expire (bounce).
    pub expires_at: Millis,
}

/// The folder new mail goes to.
pub const INBOX: &str = "INBOX";

/// The folder that keeps what a user sent through the API.
pub const SENT: &str = "Sent";

/// The folders every user has, with their special use (RFC 6154); `INBOX` has none.
pub const STANDARD_FOLDERS: [(&str, Option<&str>); 6] = [
    (INBOX, None),
    (SENT, Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Junk", Some("\\Junk")),
    ("Trash", Some("\\Trash")),
    ("Archive", Some("\\Archive")),
];

/// The special use of a standard folder's name.
pub fn special_use_of(name: &str) -> Option<&'static str> {
    STANDARD_FOLDERS
        .iter()
        .find(|(standard, _)| *standard == name)
        .and_then(|(_, special_use)| *special_use)
}

/// The longest folder name, in characters.
pub const MAX_FOLDER_NAME: usize = 200;

/// `name` as stored if it can name a folder: `INBOX` in any case is INBOX (also as the
/// first level), levels are separated by `/` and none is empty, and no control character or
/// IMAP wildcard (`*`, `%`) appears. The error says what is wrong.
pub fn folder_name(name: &str) -> Result<String, StoreError> {
    let invalid = |why| Err(StoreError::InvalidFolderName(name.to_string(), why));
    if name.is_empty() {
        return invalid("is empty");
    }
    if name.chars().count() > MAX_FOLDER_NAME {
        return invalid("is longer than 200 characters");
    }
    if name.split('/').any(str::is_empty) {
        return invalid("has an empty level (a leading, trailing or doubled /)");
    }
    if name.chars().any(char::is_control) {
        return invalid("contains a control character");
    }
    if name.contains(['*', '%']) {
        return invalid("contains * or %, which mail clients use as wildcards");
    }
    let (first, rest) = name
        .split_once('/')
        .map_or((name, None), |(f, r)| (f, Some(r)));
    Ok(match (first.eq_ignore_ascii_case(INBOX), rest) {
        (true, None) => INBOX.to_string(),
        (true, Some(rest)) => format!("{INBOX}/{rest}"),
        (false, _) => name.to_string(),
    })
}

/// Message flags as stored: a bit each (RFC 9051 system flags).
pub mod flags {
    /// `\Seen`.
    pub const SEEN: i64 = 1;
    /// `\Answered`.
    pub const ANSWERED: i64 = 2;
    /// `\Flagged`.
    pub const FLAGGED: i64 = 4;
    /// `\Deleted`.
    pub const DELETED: i64 = 8;
    /// `\Draft`.
    pub const DRAFT: i64 = 16;
}

/// One of a user's folders (an IMAP mailbox), with what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// Its name; `/` separates levels.
    pub name: String,
    /// `\Sent`, `\Drafts`, `\Junk`, `\Trash` or `\Archive` (RFC 6154).
    pub special_use: Option<String>,
    /// Whether the user subscribed to it.
    pub subscribed: bool,
    /// The folder's UIDVALIDITY: UIDs are unique within it.
    pub uidvalidity: i64,
    /// The UID the next message will get.
    pub uidnext: i64,
    /// The highest modification sequence of anything in it (RFC 7162).
    pub highestmodseq: i64,
    /// Messages in it.
    pub messages: i64,
    /// Messages without `\Seen`.
    pub unseen: i64,
    /// Their total size in bytes.
    pub size: i64,
}

/// One local copy of a message: the user whose mailbox receives it, the folder, and its flags
/// on arrival. The inbound pipeline decides them per recipient.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalDelivery {
    /// The receiving user.
    pub user_id: i64,
    /// The folder, `INBOX` unless a rule says otherwise.
    pub folder: String,
    /// Its [`flags`] on arrival (`\Seen` for a read copy).
    pub flags: i64,
}

impl LocalDelivery {
    /// New mail in `user_id`'s INBOX, unread.
    pub fn inbox(user_id: i64) -> Self {
        Self {
            user_id,
            folder: INBOX.into(),
            flags: 0,
        }
    }

    /// The copy of what `user_id` sent, in their Sent folder, read.
    pub fn sent_copy(user_id: i64) -> Self {
        Self {
            user_id,
            folder: SENT.into(),
            flags: flags::SEEN,
        }
    }
}

/// A recipient that goes through the delivery queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRecipient {
    /// The address.
    pub recipient: String,
    /// Its domain, lower case.
    pub domain: String,
    /// The queue partition of the domain.
    pub partition: u32,
}

/// One durable write for the storage writer's group commit.
#[derive(Debug, Clone)]
// One per message, moved once into the writer's channel: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum WriteOp {
    /// Store an accepted message: its row, mailbox entries and queue rows.
    Accept(AcceptedMessage),
    /// A partition owner's changes, fenced by its lease, with any bounces they create.
    Apply {
        /// The owner's lease.
        lease: Lease,
        /// Row changes.
        updates: Vec<EntryUpdate>,
        /// Messages to store with them (bounces).
        new_messages: Vec<AcceptedMessage>,
    },
}

impl WriteOp {
    /// The messages this write stores.
    pub fn new_messages(&self) -> impl Iterator<Item = &AcceptedMessage> {
        match self {
            Self::Accept(m) => std::slice::from_ref(m).iter(),
            Self::Apply { new_messages, .. } => new_messages.iter(),
        }
    }
}

/// One message in a user's mailbox.
#[derive(Debug, Clone)]
pub struct MailboxItem {
    /// Mailbox entry id (the API's message id).
    pub id: i64,
    /// Folder name.
    pub folder: String,
    /// Its UID in the folder.
    pub uid: i64,
    /// Its [`flags`].
    pub flags: i64,
    /// Body size in bytes.
    pub size: i64,
    /// Acceptance time.
    pub received_at: Millis,
    /// Blob key of the body.
    pub blob_key: String,
    /// The envelope sender (empty for the null sender), shown as `Return-Path:`.
    pub envelope_from: String,
    /// Parsed header fields.
    pub summary: MessageSummary,
}

impl MailboxItem {
    /// Whether it has been read (`\Seen`).
    pub fn seen(&self) -> bool {
        self.flags & flags::SEEN != 0
    }
}

/// One message of a folder as a mail client sees it (no parsed header fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderEntry {
    /// Mailbox entry id (the API's message id).
    pub id: i64,
    /// Its UID in the folder.
    pub uid: i64,
    /// Its [`flags`].
    pub flags: i64,
    /// Its modification sequence (RFC 7162).
    pub modseq: i64,
    /// Body size in bytes.
    pub size: i64,
    /// Acceptance (or APPEND) time: the IMAP internal date.
    pub received_at: Millis,
    /// Blob key of the body.
    pub blob_key: String,
    /// The envelope sender (empty for the null sender), shown as `Return-Path:`.
    pub envelope_from: String,
}

/// A folder's identity and version: what a client that has it selected compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderState {
    /// UIDs are unique within it.
    pub uidvalidity: i64,
    /// The UID the next message will get.
    pub uidnext: i64,
    /// Moves with every change in the folder.
    pub highestmodseq: i64,
}

/// A folder's messages in UID order, read in one snapshot with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderContents {
    /// The folder's state when its messages were read.
    pub state: FolderState,
    /// Its messages, by ascending UID.
    pub entries: Vec<FolderEntry>,
}

/// One page of a listing; `next_cursor` is set when more items follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Opaque cursor for the next page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched rows: the extra row only says that more follow, and
    /// the cursor is the id of the page's last item.
    pub(crate) fn from_rows(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> i64) -> Self {
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|i| id(i).to_string())
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

/// The id below which a listing continues (`i64::MAX` for the first page).
pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<i64, StoreError> {
    match cursor {
        None => Ok(i64::MAX),
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| StoreError::InvalidCursor(c.to_string())),
    }
}

/// Accounts: hosted domains, users and their credentials, bearer tokens and the web UI's
/// sessions, and the lookup that tells where mail for an address goes.
#[async_trait::async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Adds a hosted domain.
    async fn add_domain(&self, name: &str) -> Result<Domain, StoreError>;
    /// All hosted domains, by name.
    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError>;
    /// Removes a domain that has no users.
    async fn delete_domain(&self, name: &str) -> Result<(), StoreError>;
    /// Adds an account; the domain of a non-admin must be hosted.
    async fn add_user(
        &self,
        email: &str,
        password_hash: &str,
        is_admin: bool,
        quota_bytes: Option<i64>,
    ) -> Result<User, StoreError>;
    /// All accounts, by email.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// An account and its password hash.
    async fn credentials(&self, email: &str) -> Result<Option<Credentials>, StoreError>;
    /// Replaces a password hash and revokes the user's bearer tokens (in one transaction).
    async fn set_password(&self, email: &str, password_hash: &str) -> Result<(), StoreError>;
    /// Changes an account's quota and admin flag (fields left `None` stay as they are).
    async fn update_user(&self, email: &str, changes: &UserChanges) -> Result<User, StoreError>;
    /// Removes an account, its mailbox and tokens; returns blob keys no longer referenced.
    async fn delete_user(&self, email: &str) -> Result<Vec<String>, StoreError>;
    /// Whether any admin account exists.
    async fn admin_exists(&self) -> Result<bool, StoreError>;
    /// Creates an admin account only if no admin exists yet, atomically (replicas starting
    /// together create exactly one); true if this call created it.
    async fn create_first_admin(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError>;
    /// Stores a bearer token's hash for a user; returns the token's id.
    async fn add_token(
        &self,
        user_id: i64,
        token_hash: &str,
        name: &str,
        expires_at: Millis,
    ) -> Result<i64, StoreError>;
    /// A user's unexpired tokens, newest first.
    async fn list_tokens(&self, user_id: i64) -> Result<Vec<TokenInfo>, StoreError>;
    /// Revokes one of a user's tokens; false if the user has no token with that id.
    async fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError>;
    /// The user owning an unexpired token.
    async fn user_by_token(&self, token_hash: &str) -> Result<Option<User>, StoreError>;
    /// Stores a new web session (its cookie token hashed) and drops every expired one.
    async fn add_web_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf_token: &str,
        expires_at: Millis,
    ) -> Result<i64, StoreError>;
    /// The live session of a cookie: not past `expires_at` and seen after `idle_since`.
    /// Marks it seen now (at most once per `touch_every`, to spare the database a write per
    /// request).
    async fn web_session(
        &self,
        token_hash: &str,
        idle_since: Millis,
        touch_every: Millis,
    ) -> Result<Option<WebSession>, StoreError>;
    /// Ends a session (sign-out); false if there was none.
    async fn delete_web_session(&self, token_hash: &str) -> Result<bool, StoreError>;
    /// Resolves an address for RCPT TO.
    async fn lookup_recipient(&self, address: &str) -> Result<RecipientLookup, StoreError>;
}

/// Mailboxes and the messages in them: the acceptance commit that writes messages, mailbox
/// entries and queue rows; listing, flags and deletion; and the purge of what nothing
/// references any more.
#[async_trait::async_trait]
pub trait MailboxStore: Send + Sync + 'static {
    /// Commits `ops` in one transaction, each in its own savepoint: the outer error means
    /// nothing was committed; otherwise each op's result says whether it is durable.
    ///
    /// Every new message's body must be in `blobs`: it is checked inside the transaction,
    /// under the lock [`MailboxStore::delete_unreferenced_blobs`] takes, so a body deleted as
    /// unreferenced after it was written fails its op with [`StoreError::BlobMissing`]
    /// instead of committing a reference to nothing.
    async fn write_batch(
        &self,
        ops: &[WriteOp],
        blobs: &dyn BlobStore,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// Deletes finished queue rows last changed before `before`, and messages nothing refers to;
    /// returns blob keys no longer referenced.
    async fn purge_finished(&self, before: Millis) -> Result<Vec<String>, StoreError>;
    /// Deletes from `blobs` those of `keys` that no message references, deciding and deleting
    /// under a lock that excludes concurrent acceptance commits (see
    /// [`MailboxStore::write_batch`]); returns how many were deleted. A blob that cannot be
    /// deleted is logged and left (it only costs space).
    async fn delete_unreferenced_blobs(
        &self,
        keys: &[String],
        blobs: &dyn BlobStore,
    ) -> Result<usize, StoreError>;
    /// A user's folders, by name, with their counts.
    async fn list_folders(&self, user_id: i64) -> Result<Vec<Folder>, StoreError>;
    /// A page of a user's folder, newest first.
    async fn list_mailbox(
        &self,
        user_id: i64,
        folder: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<MailboxItem>, StoreError>;
    /// One message of a user's mailbox.
    async fn get_mailbox_item(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<Option<MailboxItem>, StoreError>;
    /// Sets the [`flags`] in `add` and clears those in `remove` on the user's messages `ids`,
    /// as one change (one modification sequence per folder); returns how many of `ids` the
    /// user has (others are ignored).
    async fn set_flags(
        &self,
        user_id: i64,
        ids: &[i64],
        add: i64,
        remove: i64,
    ) -> Result<usize, StoreError>;
    /// A folder's state, if the user has the folder.
    async fn folder_state(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<Option<FolderState>, StoreError>;
    /// A folder's messages with its state, read in one snapshot; `None` if there is no such
    /// folder.
    async fn folder_contents(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<Option<FolderContents>, StoreError>;
    /// UIDs expunged from a folder with a modification sequence above `modseq` (QRESYNC's
    /// VANISHED), ascending.
    async fn expunged_since(
        &self,
        user_id: i64,
        name: &str,
        modseq: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// A message in the user's folder whose `Message-ID:` is `header_id`: its folder's
    /// UIDVALIDITY and its UID (the latest if several).
    async fn find_by_message_id(
        &self,
        user_id: i64,
        folder: &str,
        header_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError>;
    /// Where the message accepted as `message_id` (an acceptance id) landed in the user's
    /// mailbox: its folder's UIDVALIDITY and its UID.
    async fn placed(
        &self,
        user_id: i64,
        message_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError>;
    /// Copies a message into another folder (it counts again in the user's usage); returns
    /// the copy's UID there.
    async fn copy_message(&self, user_id: i64, id: i64, to: &str) -> Result<i64, StoreError>;
    /// Creates a folder (the name as [`folder_name`] accepts it).
    async fn create_folder(&self, user_id: i64, name: &str) -> Result<(), StoreError>;
    /// Renames a folder and the folders inside it; their messages and UIDs go with them.
    async fn rename_folder(&self, user_id: i64, from: &str, to: &str) -> Result<(), StoreError>;
    /// Deletes a folder with its messages (not INBOX, not one with folders inside it);
    /// returns blobs no longer referenced.
    async fn delete_folder(&self, user_id: i64, name: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes every message of a folder; returns blobs no longer referenced.
    async fn empty_folder(&self, user_id: i64, name: &str) -> Result<Vec<String>, StoreError>;
    /// Subscribes to a folder or unsubscribes.
    async fn set_subscribed(
        &self,
        user_id: i64,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError>;
    /// Moves a message to another folder: it keeps its id and gets the next UID there (which
    /// is returned); its old UID is expunged from the folder it left.
    async fn move_message(&self, user_id: i64, id: i64, to: &str) -> Result<i64, StoreError>;
    /// Deletes a message from a user's mailbox; `Some(keys)` lists blobs no longer referenced.
    async fn delete_mailbox_item(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<Option<Vec<String>>, StoreError>;
    /// Total stored messages (one per acceptance), for tests and status.
    async fn count_messages(&self) -> Result<i64, StoreError>;
}

/// The database itself: its health and the settings table.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Answers only when the database does.
    async fn health(&self) -> Result<(), StoreError>;
    /// A value from the settings table.
    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Stores a value in the settings table.
    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;
}

/// The two halves of storage, shared by every part of the process.
#[derive(Clone)]
pub struct Stores {
    /// The database's health and settings.
    pub meta: Arc<dyn MetadataStore>,
    /// Domains, users, tokens, sessions (same database).
    pub accounts: Arc<dyn AccountStore>,
    /// Mailboxes and messages, and the acceptance commit (same database).
    pub mailboxes: Arc<dyn MailboxStore>,
    /// The delivery queue (same database as `meta`).
    pub queue: Arc<dyn QueueStore>,
    /// DKIM signing keys (same database as `meta`).
    pub dkim: Arc<dyn DkimKeyStore>,
    /// Bodies (encrypted when a master key is set).
    pub blobs: Arc<dyn BlobStore>,
    /// Encryption at rest, when `security.master_key` is set.
    pub cipher: Option<crypto::Cipher>,
    /// Bodies up to this size are kept in their message's row (`storage.inline_max_bytes`).
    pub inline_max: usize,
}

/// Whether a migration error says the schema is another build's (a newer one, or changed
/// migrations), which waiting does not cure.
fn schema_is_foreign(error: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    matches!(
        error,
        MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(_) | MigrateError::Dirty(_)
    )
}

/// Runs `connect` until it succeeds or `deadline` passes, logging each failed attempt and
/// backing off from 0.5 s to 5 s.
pub async fn retry_until<T, E, F, Fut>(
    deadline: tokio::time::Instant,
    what: &str,
    mut connect: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = std::time::Duration::from_millis(500);
    let mut attempt = 1u32;
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let now = tokio::time::Instant::now();
                if now + delay > deadline {
                    anyhow::bail!(
                        "{what} still unusable after {attempt} attempt(s) within \
                         server.startup_timeout: {error}"
                    );
                }
                tracing::warn!(backend = what, attempt, %error, retry_in_ms = delay.as_millis() as u64, "backend not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

/// Name of the setting holding the master key's check value.
const KEY_CHECK: &str = "security.key_check";

/// Refuses to run with a master key other than the one the data was encrypted with, or
/// without a key when data is encrypted; records the key's check value on first use.
async fn check_master_key(
    meta: &dyn MetadataStore,
    cipher: Option<&crypto::Cipher>,
) -> anyhow::Result<()> {
    let stored = meta.setting(KEY_CHECK).await?;
    match (stored, cipher) {
        (None, None) => {}
        (None, Some(c)) => meta.set_setting(KEY_CHECK, c.check_value()).await?,
        (Some(v), Some(c)) if v == c.check_value() => {}
        (Some(_), Some(_)) => anyhow::bail!(
            "MAIRUST_MASTER_KEY (security.master_key) is not the key this data was encrypted \
             with; use the original key (or `mairust key rotate` to change it)"
        ),
        (Some(_), None) => anyhow::bail!(
            "this data is encrypted at rest: set MAIRUST_MASTER_KEY (security.master_key) to \
             the master key"
        ),
    }
    Ok(())
}

impl Stores {
    /// Opens (and migrates) the configured database and blob store, retrying with backoff
    /// until `server.startup_timeout` (backends in containers start in any order), and checks
    /// the master key against the data.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + config.server.startup_timeout;
        // A schema this build does not know is no outage to wait out: it fails at once.
        let connected = retry_until(deadline, "database", || async {
            match SqlStore::connect(&config.database).await {
                Err(StoreError::Migrate(e)) if schema_is_foreign(&e) => Ok(Err(e)),
                other => other.map(Ok),
            }
        })
        .await?;
        let sql = Arc::new(connected.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(version) => anyhow::anyhow!(
                "the database was migrated by a newer MaiRust (its migration {version} is unknown \
                 to this build): run that version or a later one, or restore the dump taken \
                 before the upgrade (docs/DEPLOYMENT.md, upgrading and rolling back)"
            ),
            other => anyhow::anyhow!(
                "the database's schema does not match this build's migrations: {other}; run the \
                 MaiRust version that created it, or restore a dump"
            ),
        })?);
        let backend = Self::blob_backend(config, deadline).await?;
        let cipher = match &config.security.master_key {
            Some(key) => Some(crypto::Cipher::from_master_key(key)?),
            None => None,
        };
        check_master_key(sql.as_ref(), cipher.as_ref()).await?;
        // Bodies kept in their rows are read before the backend; encryption wraps both.
        let stored: Arc<dyn BlobStore> =
            Arc::new(inline::InlineBodyStore::new(sql.as_ref().clone(), backend));
        let blobs: Arc<dyn BlobStore> = match &cipher {
            Some(c) => Arc::new(encrypted::EncryptedBlobStore::new(stored, c.clone())),
            None => stored,
        };
        Ok(Self {
            meta: sql.clone(),
            accounts: sql.clone(),
            mailboxes: sql.clone(),
            queue: sql.clone(),
            dkim: sql,
            blobs,
            cipher,
            inline_max: config.storage.inline_max_bytes,
        })
    }

    /// The stored form of a body small enough to travel with its metadata (sealed when a
    /// master key is set), or the body back when it belongs in the blob store. Sealing is CPU
    /// work: the acceptance path calls this in place for small bodies and on the blocking pool
    /// for large ones (`acceptance::body_work`).
    pub fn inline_form(&self, data: Vec<u8>) -> Result<bytes::Bytes, Vec<u8>> {
        if data.len() > self.inline_max {
            return Err(data);
        }
        Ok(match &self.cipher {
            Some(c) => c.seal_blob(&data).into(),
            None => data.into(),
        })
    }

    /// Readies a body for the commit of its message: a small one is returned to travel in the
    /// commit (durable with it, one fsync for the whole group), a larger one is written to the
    /// blob store now and `None` is returned.
    pub async fn stage_body(
        &self,
        key: &str,
        data: Vec<u8>,
    ) -> Result<Option<bytes::Bytes>, BlobError> {
        match self.inline_form(data) {
            Ok(inline) => Ok(Some(inline)),
            Err(data) => {
                self.blobs.put(key, &data).await?;
                Ok(None)
            }
        }
    }

    /// The configured blob backend, without encryption.
    pub async fn blob_backend(
        config: &Config,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Arc<dyn BlobStore>> {
        Self::backend_of(config.storage.backend, &config.storage.options, deadline).await
    }

    /// A blob backend of the given kind from `options`, without encryption.
    pub async fn backend_of(
        kind: StorageBackend,
        options: &crate::config::StorageOptions,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Arc<dyn BlobStore>> {
        Ok(match kind {
            StorageBackend::Fs => Arc::new(fs::FsBlobStore::open(&options.path)?),
            StorageBackend::S3 => {
                let s3 = s3::S3BlobStore::new(options)?;
                retry_until(deadline, "S3", || s3.verify()).await?;
                Arc::new(s3)
            }
        })
    }

    /// Deletes those of `keys` that the metadata no longer references (a body stored again
    /// meanwhile is kept). Failures only leak space, so they are logged, not returned.
    pub async fn delete_blobs(&self, keys: &[String]) {
        // Small groups: acceptance commits wait while a group is decided and deleted.
        for group in keys.chunks(64) {
            if let Err(error) = self
                .mailboxes
                .delete_unreferenced_blobs(group, self.blobs.as_ref())
                .await
            {
                tracing::warn!(%error, blobs = group.len(), "could not delete unreferenced blobs");
            }
        }
    }
}
