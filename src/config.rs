//! Configuration: built-in defaults < YAML file < environment.
//!
//! Every key can be set from the environment as `MAIRUST_<SECTION>__<KEY>` (nested keys add more
//! `__`), and the names operators already use elsewhere work as they are (`DATABASE_URL`,
//! `STORAGE_BACKEND`, `LOG_LEVEL`, `MAIRUST_ADMIN_EMAIL`, ...). Unknown keys and bad values are
//! errors that name the key, so a typo never silently falls back to a default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mairust/config.yaml";

/// Environment variables read under their conventional names, and the key each one sets.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("STORAGE_BACKEND", "storage.backend"),
    ("S3_BUCKET", "storage.options.bucket"),
    ("S3_REGION", "storage.options.region"),
    ("S3_ENDPOINT", "storage.options.endpoint"),
    ("S3_ACCESS_KEY", "storage.options.access_key"),
    ("S3_SECRET_KEY", "storage.options.secret_key"),
    ("LOG_LEVEL", "log.level"),
    ("MAIRUST_ADMIN_EMAIL", "admin.email"),
    ("MAIRUST_ADMIN_PASSWORD", "admin.password"),
    ("MAIRUST_MASTER_KEY", "security.master_key"),
    ("API_URL", "web.api_url"),
];

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file could not be read or is not valid YAML.
    #[error("cannot read config file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: config::ConfigError,
    },
    /// A key is unknown or its value has the wrong type.
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The layers could not be merged.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
}

/// The whole configuration of a MaiRust process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, host name and roles.
    pub server: ServerConfig,
    /// The metadata database.
    pub database: DatabaseConfig,
    /// Where message bodies live.
    pub storage: StorageConfig,
    /// Certificate for STARTTLS.
    pub tls: TlsConfig,
    /// SMTP limits and policies.
    pub smtp: SmtpConfig,
    /// Outbound delivery.
    pub delivery: DeliveryConfig,
    /// The partitioned delivery queue.
    pub queue: QueueConfig,
    /// REST API settings.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
    /// The bootstrap administrator.
    pub admin: AdminConfig,
    /// Secrets.
    pub security: SecurityConfig,
    /// Membership and requests between replicas over QUIC.
    pub cluster: ClusterConfig,
    /// The web UI and its proxy to the API.
    pub web: WebConfig,
    /// Mail submitted on the submission port.
    pub submission: SubmissionConfig,
    /// Mail clients over IMAP.
    pub imap: ImapConfig,
}

/// `imap` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    /// IMAP connections one account may have open at once (every device and address
    /// together); a sign-in beyond it is refused.
    pub max_connections_per_user: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        Self {
            max_connections_per_user: 20,
        }
    }
}

/// `submission` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmissionConfig {
    /// Keep a copy of what a signed-in user submits in their Sent folder (for mail clients
    /// that do not APPEND their own copy).
    pub save_to_sent: bool,
}

/// A part of MaiRust that a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// SMTP listeners (MX and submission).
    Smtp,
    /// Delivery queue partitions.
    Queue,
    /// REST API, health and metrics.
    Api,
    /// The web UI, and `/api` proxied to `web.api_url` when the api role runs elsewhere.
    Web,
    /// Mail clients' access to their mailboxes: POP3 (and POP3S) today. Not in the default
    /// list yet.
    Imap,
}

/// `server` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name used in the SMTP greeting, EHLO reply, Received headers and Message-IDs.
    pub hostname: String,
    /// Address every listener binds to.
    pub bind: IpAddr,
    /// MX port (mail for hosted domains only).
    pub smtp_port: u16,
    /// Submission port (AUTH required).
    pub submission_port: u16,
    /// REST API, health and metrics port.
    pub api_port: u16,
    /// IMAP port, with STARTTLS (the imap role).
    pub imap_port: u16,
    /// IMAPS port: TLS from the first byte (the imap role).
    pub imaps_port: u16,
    /// POP3 port, with STLS (the imap role).
    pub pop3_port: u16,
    /// POP3S port: TLS from the first byte (the imap role).
    pub pop3s_port: u16,
    /// Directory for generated state (the self-signed certificate).
    pub data_dir: PathBuf,
    /// Roles this process runs; default all.
    pub roles: Vec<Role>,
    /// Test-only: lets an admin make an actor fail through the API, to exercise supervision.
    pub fault_injection: bool,
    /// How long start-up keeps retrying an unreachable database or S3 endpoint.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub startup_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: default_hostname(),
            bind: IpAddr::from([0, 0, 0, 0]),
            smtp_port: 25,
            submission_port: 587,
            api_port: 8080,
            imap_port: 143,
            imaps_port: 993,
            pop3_port: 110,
            pop3s_port: 995,
            data_dir: PathBuf::from("/var/lib/mairust"),
            roles: vec![Role::Smtp, Role::Queue, Role::Imap, Role::Api, Role::Web],
            fault_injection: false,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl ServerConfig {
    /// Whether this process runs `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// `database` section.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`.
    #[serde(serialize_with = "write_url")]
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// Most messages committed in one group commit.
    pub max_batch: usize,
    /// Longest a single PostgreSQL statement may run (`statement_timeout`), so a hung
    /// database fails requests instead of holding them.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub statement_timeout: Duration,
    /// Longest a session or worker waits for its commit through the storage writer before
    /// giving up (`451 4.3.0`; the client retries).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub commit_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:///var/lib/mairust/db/mairust.db".into(),
            max_connections: 8,
            max_batch: 256,
            statement_timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(60),
        }
    }
}

/// Blob store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Local filesystem.
    Fs,
    /// S3-compatible object store.
    S3,
}

/// `storage` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Which backend stores bodies.
    pub backend: StorageBackend,
    /// Backend options; both backends' keys may be present.
    pub options: StorageOptions,
    /// Bodies up to this many bytes are kept in the database, in their message's row, and made
    /// durable by the metadata's group commit; larger ones go to the backend. 0: all go to
    /// the backend.
    pub inline_max_bytes: usize,
}

/// Default `storage.inline_max_bytes`: most mail without large attachments.
pub const DEFAULT_INLINE_MAX_BYTES: usize = 128 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Fs,
            options: StorageOptions::default(),
            inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
        }
    }
}

/// `storage.options`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageOptions {
    /// Root directory of the fs backend.
    pub path: PathBuf,
    /// S3 bucket.
    pub bucket: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// S3 endpoint URL (MinIO and other S3-compatible servers).
    #[serde(serialize_with = "write_url")]
    pub endpoint: Option<String>,
    /// S3 access key.
    pub access_key: Option<String>,
    /// S3 secret key.
    #[serde(serialize_with = "write_secret")]
    pub secret_key: Option<String>,
    /// Declares the fs backend's `path` a volume every node of a cluster shares.
    pub shared: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/mairust/mail"),
            bucket: None,
            region: None,
            endpoint: None,
            access_key: None,
            secret_key: None,
            shared: false,
        }
    }
}

/// `tls` section: both set, or neither (a self-signed certificate is generated).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `smtp` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Largest message accepted, in bytes (advertised in SIZE).
    pub max_message_size: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// Bad commands before the connection is closed (Postfix's `smtpd_hard_error_limit`).
    pub max_errors: usize,
    /// Bad commands after which every reply to a further one is delayed by `error_delay`
    /// (Postfix's `smtpd_soft_error_limit`). 0 disables the delay.
    pub soft_error_limit: usize,
    /// Delay before the reply to each bad command past `soft_error_limit`.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub error_delay: Duration,
    /// NOOP/RSET/VRFY/HELP and excess RCPTs allowed per session (and after each accepted
    /// message) before each counts as a bad command. 0 disables the limit.
    pub max_junk_commands: usize,
    /// Longest time one command line may take to arrive, however its bytes trickle in.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub command_deadline: Duration,
    /// Longest time a whole DATA or BDAT transfer may take.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub data_deadline: Duration,
    /// Where mail to `postmaster` (bare, or at a hosted domain without such a user) goes:
    /// a local user's address. Unset: `admin.email`, else the oldest admin account.
    pub postmaster: Option<String>,
    /// Idle time allowed while waiting for a command.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub command_timeout: Duration,
    /// Idle time allowed while receiving message data.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub data_timeout: Duration,
    /// Concurrent connections over all listeners.
    pub max_connections: usize,
    /// Concurrent connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Answer VRFY (never revealing whether a user exists).
    pub vrfy: bool,
    /// Allow AUTH without TLS (only for testing).
    pub allow_insecure_auth: bool,
    /// Clients in these networks may relay without AUTH, on either port (Postfix's
    /// `mynetworks`): `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    #[serde(deserialize_with = "networks", serialize_with = "write_displayed")]
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// Delay added per recent AUTH failure from the same address.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub auth_failure_delay: Duration,
    /// Failures from one address allowed before the delay starts.
    pub auth_failures_free: u32,
}

impl SmtpConfig {
    /// Whether a client at `ip` may relay without AUTH (`smtp.trusted_networks`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_networks.iter().any(|net| net.contains(&ip))
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 2048,
            max_errors: 20,
            soft_error_limit: 10,
            error_delay: Duration::from_secs(1),
            max_junk_commands: 100,
            command_deadline: Duration::from_secs(300),
            data_deadline: Duration::from_secs(1800),
            postmaster: None,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_connections: 1000,
            max_connections_per_ip: 50,
            vrfy: false,
            allow_insecure_auth: false,
            trusted_networks: Vec::new(),
            auth_failure_delay: Duration::from_secs(1),
            auth_failures_free: 3,
        }
    }
}

/// TLS policy for outbound delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryTls {
    /// STARTTLS when offered, else plain text.
    Opportunistic,
    /// STARTTLS or no delivery (temporary failure).
    Required,
    /// Never STARTTLS.
    None,
}

/// `delivery.relay_auth`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayAuth {
    /// Smarthost user.
    pub username: String,
    /// Smarthost password.
    #[serde(serialize_with = "write_secret")]
    pub password: String,
}

/// `delivery` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Smarthost `host:port`; unset means MX routing.
    pub relay_host: Option<HostPort>,
    /// Credentials for the smarthost.
    pub relay_auth: Option<RelayAuth>,
    /// STARTTLS policy.
    pub tls: DeliveryTls,
    /// DNS servers (`ip:port`) for MX lookups; empty means the system resolver.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Waits between attempts; the last one repeats.
    #[serde(deserialize_with = "durations", serialize_with = "write_durations")]
    pub retry_intervals: Vec<Duration>,
    /// After this long undelivered mail bounces.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub max_queue_lifetime: Duration,
    /// Concurrent connections to one destination host.
    pub concurrency_per_destination: usize,
    /// Port of MX hosts (25; other values are for tests).
    pub port: u16,
    /// Timeout of a TCP connect.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub connect_timeout: Duration,
    /// Timeout of each command reply.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub command_timeout: Duration,
    /// Timeout of the reply after the message data.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub data_timeout: Duration,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// How long an idle outbound connection stays open for the next delivery to its host
    /// (Postfix's `smtp_connection_cache_time_limit`); zero closes every connection at once.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub connection_cache_time: Duration,
    /// How long delivered, failed and cancelled rows stay visible in the queue API.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub retention: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            relay_host: None,
            relay_auth: None,
            tls: DeliveryTls::Opportunistic,
            dns_servers: Vec::new(),
            retry_intervals: vec![
                minutes(5),
                minutes(10),
                minutes(30),
                minutes(60),
                minutes(120),
                minutes(240),
            ],
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            concurrency_per_destination: 4,
            port: 25,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_messages_per_connection: 50,
            connection_cache_time: Duration::from_secs(2),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl DeliveryConfig {
    /// The wait after the `attempt`-th failed attempt (1-based); the last interval repeats.
    pub fn retry_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) as usize - 1).min(self.retry_intervals.len().saturating_sub(1));
        self.retry_intervals
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }
}

/// `queue` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Number of partitions; fixed once mail is queued.
    pub partitions: u32,
    /// Lease lifetime: how long a dead owner blocks its partitions.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub lease_ttl: Duration,
    /// How often a partition looks for due mail without a hint.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub poll_interval: Duration,
    /// Most rows a partition takes per scan.
    pub batch_size: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            partitions: 64,
            lease_ttl: Duration::from_secs(10),
            poll_interval: Duration::from_secs(30),
            batch_size: 200,
        }
    }
}

/// `cluster` section: replicas on one database and one bucket that share the queue.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Whether this process joins a cluster.
    pub enabled: bool,
    /// This node's id, also the owner name on its partition leases; default the host name.
    pub node_id: Option<String>,
    /// UDP address of the QUIC endpoint.
    pub bind: String,
    /// Address other nodes reach this one at; default `bind` (with the host's address when
    /// `bind` is unspecified).
    pub advertise: Option<String>,
    /// Addresses (`host:port`) of nodes to join through.
    pub seeds: Vec<String>,
    /// A name whose addresses are seeds (a Kubernetes headless Service), resolved again
    /// periodically; `host:port`.
    pub seed_dns: Option<String>,
    /// Shared secret: every node with the same secret trusts every other.
    #[serde(serialize_with = "write_secret")]
    pub secret: Option<String>,
    /// Operator-supplied certificates instead of the secret.
    pub tls: Option<ClusterTls>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: None,
            bind: "0.0.0.0:7946".into(),
            advertise: None,
            seeds: Vec::new(),
            seed_dns: None,
            secret: None,
            tls: None,
        }
    }
}

impl ClusterConfig {
    /// This node's id: `node_id`, or the host name.
    pub fn node_id(&self, hostname: &str) -> String {
        self.node_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(|| hostname.to_string())
    }
}

/// `cluster.tls`: PEM files of the cluster CA and this node's certificate and key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// CA certificate(s) every peer's certificate must chain to.
    pub ca: PathBuf,
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// `api` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest page a list endpoint returns.
    pub max_page_size: u32,
    /// Lifetime of bearer tokens.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub token_ttl: Duration,
    /// Largest request body in bytes (the send API allows what `smtp.max_message_size`
    /// needs in base64 instead).
    pub max_body_bytes: usize,
    /// A web session ends after this long without a request.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub session_idle_timeout: Duration,
    /// A web session ends this long after sign-in, however active.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub session_lifetime: Duration,
    /// When the session cookie carries `Secure`.
    pub secure_cookies: SecureCookies,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_page_size: 200,
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_body_bytes: 1024 * 1024,
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
            secure_cookies: SecureCookies::Auto,
        }
    }
}

/// `api.secure_cookies`: whether browsers may send the session cookie over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureCookies {
    /// `Secure` when the request came over HTTPS, as a TLS-terminating proxy says in
    /// `X-Forwarded-Proto: https`.
    Auto,
    /// Always `Secure` (the site is only reached over HTTPS).
    Always,
    /// Never (a plain-HTTP site, such as a test or a private network).
    Never,
}

/// `web` section: the web role's proxy to the API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Base URL of the API (`http://api:8080`) that `/api` is proxied to; required with the
    /// web role when the api role does not run in the same process.
    pub api_url: Option<String>,
    /// Longest wait for the API's response headers to a proxied request (bodies then stream
    /// without this limit, so large downloads are not cut).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub proxy_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            api_url: None,
            proxy_timeout: Duration::from_secs(60),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON, or text when stdout is a terminal.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `log` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// `admin` section: the account created on first start.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin's email address.
    pub email: Option<String>,
    /// Admin's password.
    #[serde(serialize_with = "write_secret")]
    pub password: Option<String>,
}

/// `security` section.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Master key for encryption at rest.
    #[serde(serialize_with = "write_secret")]
    pub master_key: Option<String>,
}

impl Config {
    /// Loads defaults, then `path` (or the default path if it exists), then the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        if let Some(file) = file {
            // Read it ourselves so that a missing file is an error naming the file.
            let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::File {
                path: file.clone(),
                source: config::ConfigError::Foreign(Box::new(e)),
            })?;
            let parsed = config::Config::builder()
                .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
                .build()
                .map_err(|source| ConfigError::File {
                    path: file.clone(),
                    source,
                })?;
            builder = builder.add_source(parsed);
        }

        let mut generic = HashMap::new();
        for (name, value) in env {
            if let Some((_, key)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == name) {
                builder = builder.set_override(*key, value)?;
            } else if let Some(rest) = name.strip_prefix("MAIRUST_")
                && rest.contains("__")
            {
                generic.insert(name.clone(), value);
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("MAIRUST")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.roles")
                .with_list_parse_key("delivery.retry_intervals")
                .with_list_parse_key("delivery.dns_servers")
                .with_list_parse_key("cluster.seeds")
                .with_list_parse_key("smtp.trusted_networks")
                .try_parsing(true)
                .source(Some(generic)),
        );

        let merged = builder.build()?;
        let config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.server.hostname.trim().is_empty() {
            return Err(invalid("server.hostname", "must not be empty"));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls", "set both `cert` and `key`, or neither"));
        }
        if self.smtp.max_line_length < 512 {
            return Err(invalid(
                "smtp.max_line_length",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            ));
        }
        if self.smtp.max_recipients == 0 || self.smtp.max_message_size == 0 {
            return Err(invalid(
                "smtp",
                "max_recipients and max_message_size must be positive",
            ));
        }
        if self.api.session_idle_timeout < Duration::from_secs(1)
            || self.api.session_lifetime < self.api.session_idle_timeout
        {
            return Err(invalid(
                "api.session_idle_timeout",
                "must be at least 1s and no longer than api.session_lifetime",
            ));
        }
        if self.smtp.command_deadline.is_zero() || self.smtp.data_deadline.is_zero() {
            return Err(invalid(
                "smtp",
                "command_deadline and data_deadline must be positive",
            ));
        }
        if let Some(postmaster) = &self.smtp.postmaster
            && !postmaster.contains('@')
        {
            return Err(invalid(
                "smtp.postmaster",
                "must be the full address of a local user",
            ));
        }
        if self.database.max_connections == 0 || self.database.max_batch == 0 {
            return Err(invalid(
                "database",
                "max_connections and max_batch must be positive",
            ));
        }
        if self.delivery.retry_intervals.is_empty() {
            return Err(invalid(
                "delivery.retry_intervals",
                "needs at least one interval",
            ));
        }
        if self.delivery.concurrency_per_destination == 0
            || self.delivery.max_messages_per_connection == 0
        {
            return Err(invalid(
                "delivery",
                "concurrency_per_destination and max_messages_per_connection must be positive",
            ));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        if self.queue.partitions == 0 || self.queue.partitions > 4096 {
            return Err(invalid("queue.partitions", "must be between 1 and 4096"));
        }
        if self.queue.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("queue.lease_ttl", "must be at least 1s"));
        }
        if self.cluster.enabled {
            self.validate_cluster()?;
        }
        self.validate_web()?;
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `web.api_url` must be an absolute http(s) URL with a host, and set whenever the web
    /// role has no local API to serve `/api`.
    fn validate_web(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if let Some(url) = &self.web.api_url {
            let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
                invalid(
                    "web.api_url",
                    format!("`{url}` is not a URL ({e}); write it like http://api:8080"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(invalid(
                    "web.api_url",
                    format!(
                        "`{url}` must be an http:// or https:// URL with a host, like http://api:8080"
                    ),
                ));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(invalid(
                    "web.api_url",
                    format!("`{url}` must not have a query or fragment; give the API's base URL"),
                ));
            }
        }
        if self.web.proxy_timeout.is_zero() {
            return Err(invalid("web.proxy_timeout", "must be positive".into()));
        }
        if self.server.has_role(Role::Web)
            && !self.server.has_role(Role::Api)
            && self.web.api_url.is_none()
        {
            return Err(invalid(
                "web.api_url",
                "the web role without the api role proxies /api to another process: set \
                 web.api_url (environment API_URL) to the API's URL, such as http://api:8080, \
                 or add the api role to server.roles"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A cluster needs storage every node sees and a way for nodes to trust each other.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.database.url.starts_with("sqlite:") {
            return Err(invalid(
                "cluster.enabled",
                "a cluster needs a database every node shares: set database.url to a \
                 postgres:// URL (SQLite is one process's file)",
            ));
        }
        if self.storage.backend == StorageBackend::Fs && !self.storage.options.shared {
            return Err(invalid(
                "cluster.enabled",
                "a cluster needs message bodies every node can read: use storage.backend: s3, \
                 or set storage.options.shared: true if storage.options.path is a volume all \
                 nodes mount",
            ));
        }
        let secret = self.cluster.secret.as_deref().map(str::trim).unwrap_or("");
        match (&self.cluster.tls, secret.is_empty()) {
            (None, true) => {
                return Err(invalid(
                    "cluster.secret",
                    "set a shared secret (at least 16 characters, the same on every node) or \
                     cluster.tls.ca, cluster.tls.cert and cluster.tls.key",
                ));
            }
            (Some(_), false) => {
                return Err(invalid(
                    "cluster",
                    "set either cluster.secret or cluster.tls, not both",
                ));
            }
            (None, false) if secret.len() < 16 => {
                return Err(invalid(
                    "cluster.secret",
                    "must be at least 16 characters; generate one with `openssl rand -hex 32`",
                ));
            }
            _ => {}
        }
        if self.cluster.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "cluster.bind",
                "must be an IP address and UDP port, such as 0.0.0.0:7946",
            ));
        }
        if let Some(id) = &self.cluster.node_id
            && (id.trim().is_empty() || id.len() > 128 || id.chars().any(char::is_whitespace))
        {
            return Err(invalid(
                "cluster.node_id",
                "must be 1 to 128 characters without spaces",
            ));
        }
        Ok(())
    }
}

/// What `Debug` output (and `check-config`) shows instead of a secret.
const REDACTED: &str = "<redacted>";

/// A URL with the password of its user info replaced, for output and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:{REDACTED}{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

// How values are written out (`check-config`, `Debug`): secrets never, durations and
// networks in the form they are written in.

/// A secret (`String` or `Option<String>`): whether it is set, never its value.
fn write_secret<T: SecretField, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    if value.is_set() {
        s.serialize_str(REDACTED)
    } else {
        s.serialize_none()
    }
}

/// A field [`write_secret`] writes.
trait SecretField {
    fn is_set(&self) -> bool;
}

impl SecretField for String {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl SecretField for Option<String> {
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

/// A URL (`String` or `Option<String>`) without the password of its user info.
fn write_url<T: UrlField, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    match value.url() {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// A field [`write_url`] writes.
trait UrlField {
    fn url(&self) -> Option<&str>;
}

impl UrlField for String {
    fn url(&self) -> Option<&str> {
        Some(self)
    }
}

impl UrlField for Option<String> {
    fn url(&self) -> Option<&str> {
        self.as_deref()
    }
}

fn write_duration<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}

fn write_durations<S: Serializer>(values: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        values
            .iter()
            .map(|v| humantime::format_duration(*v).to_string()),
    )
}

fn write_displayed<T: std::fmt::Display, S: Serializer>(
    values: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(values.iter().map(ToString::to_string))
}

/// `Debug` of a section holding secrets: what `check-config` prints of it, secrets redacted.
macro_rules! debug_as_written {
    ($($section:ty),*) => {$(
        impl std::fmt::Debug for $section {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_string(self) {
                    Ok(text) => f.write_str(&text),
                    Err(_) => f.write_str(stringify!($section)),
                }
            }
        }
    )*};
}

debug_as_written!(
    DatabaseConfig,
    StorageOptions,
    RelayAuth,
    AdminConfig,
    ClusterConfig,
    SecurityConfig
);

/// Passwords the documentation and earlier compose files show as examples: a bootstrap admin
/// with one of them is open to anyone who read the docs.
const EXAMPLE_PASSWORDS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "a-long-password",
    "password",
    "password123",
    "admin",
    "administrator",
    "secret",
    "mairust",
    "letmein",
    "12345678",
];

impl Config {
    /// What an operator must fix in this configuration although MaiRust runs: logged loudly
    /// at start and shown on the admin dashboard.
    pub fn setup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let hostname = self.server.hostname.trim_end_matches('.');
        if !hostname.contains('.') {
            warnings.push(format!(
                "server.hostname `{hostname}` is not a fully qualified domain name (in a container \
                 it is the container id): the SMTP greeting, the certificate, Message-IDs, a \
                 generated admin's address and the suggested MX record carry it; set \
                 server.hostname (MAIRUST_SERVER__HOSTNAME) to the name your MX record points at, \
                 e.g. mail.example.com"
            ));
        }
        if let Some(password) = &self.admin.password
            && EXAMPLE_PASSWORDS
                .iter()
                .any(|example| password.eq_ignore_ascii_case(example))
        {
            warnings.push(
                "the bootstrap admin's password (admin.password, MAIRUST_ADMIN_PASSWORD) is an \
                 example from the documentation: anyone who read it can sign in; set a password \
                 of your own (openssl rand -base64 18)"
                    .to_string(),
            );
        }
        warnings
    }

    /// The effective configuration as YAML: every key, secrets redacted (`check-config`).
    pub fn to_redacted_yaml(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut out = String::new();
        write_yaml(&value, 0, &mut out);
        out
    }
}

/// Writes `value` as block YAML at `indent` (a mapping or a list on its own lines; strings
/// double-quoted, which YAML reads as JSON strings).
fn write_yaml(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match item {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(item, indent + 2, out);
                    }
                    Value::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(item, indent + 2, out);
                    }
                    scalar => out.push_str(&format!("{pad}{key}: {}\n", inline_yaml(scalar))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        write_yaml(item, indent + 2, out);
                    }
                    scalar => out.push_str(&format!("{pad}- {}\n", inline_yaml(scalar))),
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", inline_yaml(scalar))),
    }
}

/// A scalar (or an empty mapping or list) on one line.
fn inline_yaml(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Object(_) => "{}".into(),
        serde_json::Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// A list of durations (`["5m", "10m"]`, or `5m,10m` from the environment).
/// A host name or address with a port, written `host`, `host:port` or `[v6]:port` (port 25
/// when left out).
#[derive(Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host[:port]` (IPv6 in brackets); `None` when malformed.
    pub fn parse(text: &str, default_port: u16) -> Option<Self> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (host, port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, port.parse().ok()?),
                Some(_) => return None,
                None => (text, default_port),
            }
        };
        (!host.is_empty()).then(|| Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text, 25).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` must be `host` or `host:port` (IPv6 as `[::1]:25`)"
            ))
        })
    }
}

/// Reads networks written as CIDR (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| parse_trusted_network(text).map_err(serde::de::Error::custom))
        .collect()
}

/// One entry of `smtp.trusted_networks`: a network or one address. A network that covers
/// every address would make an open relay, and one with host bits set (`127.0.0.1/8`) does
/// not say which was meant: both are refused, naming the entry.
fn parse_trusted_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    let net = text
        .parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("`{text}` is not a network: write `10.0.0.0/8`, `2001:db8::/32` or one address")
        })?;
    if net.prefix_len() == 0 {
        return Err(format!(
            "`{text}` covers every address and would make an open relay: list the networks of \
             your own servers only"
        ));
    }
    if net != net.trunc() {
        return Err(format!(
            "`{text}` has host bits set: write `{}` for the network or `{}` for one address",
            net.trunc(),
            ipnet::IpNet::from(net.addr())
        ));
    }
    Ok(net)
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(deserialize_with = "duration")] Duration);
    Ok(Vec::<One>::deserialize(d)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

/// Reads durations written as `30s`, `5m`, `1h 30m`, or a bare number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize, Serialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => match t.trim().parse::<u64>() {
            Ok(s) => Ok(Duration::from_secs(s)),
            Err(_) => humantime::parse_duration(t.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a duration ({e}); write e.g. 30s, 5m, 1h"
                ))
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn host_port_parsing() {
        let hp = |text| HostPort::parse(text, 25).map(|h| (h.host, h.port));
        assert_eq!(hp("127.0.0.1:2526"), Some(("127.0.0.1".into(), 2526)));
        assert_eq!(
            hp("smtp.example.com"),
            Some(("smtp.example.com".into(), 25))
        );
        assert_eq!(hp("[::1]:2525"), Some(("::1".into(), 2525)));
        assert_eq!(hp("[::1]"), Some(("::1".into(), 25)));
        assert_eq!(hp("host:notaport"), None);
        assert_eq!(hp(":25"), None);
        assert_eq!(hp(""), None);
        let v6 = HostPort::parse("[::1]:2525", 25).expect("v6");
        assert_eq!(v6.to_string(), "[::1]:2525");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(c.server.smtp_port, 25);
        assert_eq!(c.server.submission_port, 587);
        assert_eq!(c.server.api_port, 8080);
        assert_eq!(
            (c.server.imap_port, c.server.imaps_port),
            (143, 993),
            "IMAP's registered ports"
        );
        assert_eq!((c.server.pop3_port, c.server.pop3s_port), (110, 995));
        assert_eq!(c.storage.backend, StorageBackend::Fs);
        assert_eq!(c.database.url, "sqlite:///var/lib/mairust/db/mairust.db");
        assert_eq!(
            c.server.roles,
            vec![Role::Smtp, Role::Queue, Role::Imap, Role::Api, Role::Web]
        );
    }

    #[test]
    fn file_then_environment_override() {
        let f = yaml(
            "server:\n  hostname: mx.example.test\n  bind: 127.0.0.1\n  smtp_port: 2525\n\
             storage:\n  backend: fs\n  options:\n    path: /tmp/x\n",
        );
        let c = Config::load_from(
            Some(f.path()),
            env(&[
                ("MAIRUST_SERVER__SMTP_PORT", "2626"),
                ("DATABASE_URL", "sqlite://./t.db"),
                ("MAIRUST_ADMIN_EMAIL", "root@example.test"),
                ("MAIRUST_SMTP__COMMAND_TIMEOUT", "30s"),
                ("MAIRUST_SERVER__ROLES", "smtp,api"),
                ("LOG_LEVEL", "debug"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.server.hostname, "mx.example.test");
        assert_eq!(c.server.smtp_port, 2626);
        assert_eq!(c.database.url, "sqlite://./t.db");
        assert_eq!(c.admin.email.as_deref(), Some("root@example.test"));
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(30));
        assert_eq!(c.server.roles, vec![Role::Smtp, Role::Api]);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.storage.options.path, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn a_cluster_needs_shared_storage_and_a_way_to_trust_peers() {
        let pg = ("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/db");
        let secret = ("MAIRUST_CLUSTER__SECRET", "0123456789abcdef0123");
        let on = ("MAIRUST_CLUSTER__ENABLED", "true");
        let fails = |pairs: &[(&str, &str)], key: &str, words: &str| {
            let err = Config::load_from(None, env(pairs)).expect_err("must fail");
            let text = err.to_string();
            assert!(text.contains(key) && text.contains(words), "{text}");
        };
        fails(&[on, secret], "cluster.enabled", "postgres://");
        fails(
            &[on, secret, pg],
            "cluster.enabled",
            "storage.options.shared",
        );
        let shared = ("MAIRUST_STORAGE__OPTIONS__SHARED", "true");
        fails(&[on, pg, shared], "cluster.secret", "cluster.tls");
        fails(
            &[on, pg, shared, ("MAIRUST_CLUSTER__SECRET", "short")],
            "cluster.secret",
            "16 characters",
        );
        fails(
            &[on, pg, shared, secret, ("MAIRUST_CLUSTER__BIND", "nowhere")],
            "cluster.bind",
            "UDP port",
        );
        let c = Config::load_from(
            None,
            env(&[
                on,
                pg,
                shared,
                secret,
                ("MAIRUST_CLUSTER__SEEDS", "core-1:7946,core-2:7946"),
                ("MAIRUST_CLUSTER__NODE_ID", "core-0"),
            ]),
        )
        .expect("a valid cluster config");
        assert_eq!(c.cluster.seeds, vec!["core-1:7946", "core-2:7946"]);
        assert_eq!(c.cluster.node_id("host"), "core-0");
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "secret redacted"
        );
        let alone = Config::load_from(None, env(&[])).expect("defaults");
        assert_eq!(alone.cluster.node_id("host"), "host");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let f = yaml("server:\n  smtp_prot: 25\n");
        let err = Config::load_from(Some(f.path()), env(&[])).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("smtp_prot"), "{text}");
    }

    #[test]
    fn smtp_hardening_keys_load_and_are_checked() {
        let c = Config::load_from(
            None,
            env(&[
                ("MAIRUST_SMTP__COMMAND_DEADLINE", "2m"),
                ("MAIRUST_SMTP__DATA_DEADLINE", "1h"),
                ("MAIRUST_SMTP__MAX_JUNK_COMMANDS", "7"),
                ("MAIRUST_SMTP__POSTMASTER", "pm@example.test"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.smtp.command_deadline, Duration::from_secs(120));
        assert_eq!(c.smtp.data_deadline, Duration::from_secs(3600));
        assert_eq!(c.smtp.max_junk_commands, 7);
        assert_eq!(c.smtp.postmaster.as_deref(), Some("pm@example.test"));
        assert_eq!(c.smtp.soft_error_limit, 10);
        assert_eq!(c.smtp.error_delay, Duration::from_secs(1));
        for (key, value) in [
            ("MAIRUST_SMTP__DATA_DEADLINE", "0s"),
            ("MAIRUST_SMTP__POSTMASTER", "postmaster"),
        ] {
            let err = Config::load_from(None, env(&[(key, value)])).expect_err("must fail");
            assert!(err.to_string().contains("smtp"), "{err}");
        }
    }

    #[test]
    fn web_sessions_idle_out_before_their_lifetime() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.api.session_idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.api.secure_cookies, SecureCookies::Auto);
        let err = Config::load_from(
            None,
            env(&[
                ("MAIRUST_API__SESSION_IDLE_TIMEOUT", "2h"),
                ("MAIRUST_API__SESSION_LIFETIME", "1h"),
            ]),
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("session_idle_timeout"), "{err}");
        let err = Config::load_from(None, env(&[("MAIRUST_API__SECURE_COOKIES", "sometimes")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("secure_cookies"), "{err}");
    }

    #[test]
    fn unknown_key_in_environment_is_named() {
        let err =
            Config::load_from(None, env(&[("MAIRUST_SERVER__NOPE", "1")])).expect_err("must fail");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::load_from(None, env(&[("MAIRUST_SERVER__SMTP_PORT", "seventy")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("smtp_port"), "{err}");
        let err = Config::load_from(None, env(&[("MAIRUST_SMTP__DATA_TIMEOUT", "soon")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("data_timeout"), "{err}");
        let err =
            Config::load_from(None, env(&[("STORAGE_BACKEND", "tape")])).expect_err("must fail");
        assert!(err.to_string().contains("backend"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = Config::load_from(Some(Path::new("/nonexistent/mairust.yaml")), env(&[]))
            .expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/mairust.yaml"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let f = yaml(
            "delivery:\n  relay_host: relay.example.test:587\n  relay_auth:\n    username: relay-user\n    password: relay-secret-1\n",
        );
        let c = Config::load_from(
            Some(f.path()),
            env(&[
                (
                    "DATABASE_URL",
                    "postgres://mairust:db-secret-2@db:5432/mairust",
                ),
                ("S3_SECRET_KEY", "s3-secret-3"),
                ("S3_ACCESS_KEY", "s3-access"),
                ("MAIRUST_ADMIN_EMAIL", "root@example.test"),
                ("MAIRUST_ADMIN_PASSWORD", "admin-secret-4"),
                ("MAIRUST_MASTER_KEY", "master-secret-5"),
            ]),
        )
        .expect("loads");
        for text in [format!("{c:?}"), format!("{c:#?}")] {
            for secret in [
                "relay-secret-1",
                "db-secret-2",
                "s3-secret-3",
                "admin-secret-4",
                "master-secret-5",
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains("relay-user") && text.contains("root@example.test"));
            assert!(
                text.contains("postgres://mairust:<redacted>@db:5432/mairust"),
                "{text}"
            );
        }
        assert_eq!(
            redact_url("sqlite:///var/db.sqlite"),
            "sqlite:///var/db.sqlite"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn shipped_dev_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dev.yaml");
        let c = Config::load_from(Some(&path), env(&[])).expect("dev.yaml loads");
        assert!(
            c.server.smtp_port >= 1024,
            "dev config uses unprivileged ports"
        );
    }

    #[test]
    fn web_api_url_from_environment_and_validated() {
        let web_only = ("MAIRUST_SERVER__ROLES", "web");
        let c = Config::load_from(None, env(&[web_only, ("API_URL", "http://api:8080")]))
            .expect("web-only with API_URL loads");
        assert_eq!(c.web.api_url.as_deref(), Some("http://api:8080"));
        assert_eq!(c.web.proxy_timeout, Duration::from_secs(60));

        let missing = Config::load_from(None, env(&[web_only])).expect_err("needs api_url");
        let text = missing.to_string();
        assert!(
            text.contains("web.api_url") && text.contains("API_URL"),
            "{text}"
        );
        // With the api role in the same process, /api is local: no URL needed.
        Config::load_from(None, env(&[("MAIRUST_SERVER__ROLES", "api,web")]))
            .expect("api,web loads without api_url");

        for bad in [
            "api:8080",
            "ftp://api:8080",
            "http://",
            "not a url",
            "http://api/?x=1",
        ] {
            let e = Config::load_from(None, env(&[web_only, ("API_URL", bad)]))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("web.api_url"), "{bad}: {e}");
        }
        let f = yaml("web:\n  api_url: https://api.example.test/base\n  proxy_timeout: 5s\n");
        let c = Config::load_from(Some(f.path()), env(&[web_only])).expect("yaml loads");
        assert_eq!(c.web.proxy_timeout, Duration::from_secs(5));
        let f = yaml("web:\n  api_url: http://api:8080\n  timeout: 5s\n");
        let e = Config::load_from(Some(f.path()), env(&[])).expect_err("unknown key");
        assert!(e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn setup_warnings_name_what_to_fix() {
        let mut config = Config::default();
        config.server.hostname = "mail.example.com".into();
        config.admin.password = Some("a password of mine".into());
        assert!(config.setup_warnings().is_empty());
        config.server.hostname = "754d265ac29a".into();
        config.admin.password = Some("ChangeMe".into());
        let warnings = config.setup_warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("`754d265ac29a` is not a fully qualified"));
        assert!(warnings[1].contains("example from the documentation"));
    }
}
