//! Every metric MaiRust records, and the log line that goes with it, as a typed event.
//!
//! Call sites build an event struct and [`emit`] it; the event's [`InternalEvent::emit`]
//! updates its metric(s) and writes its log line. Keeping both here means a metric's name,
//! kind and labels are written once, and [`METRICS`] (checked against README's "Metrics"
//! section by a test) lists exactly what the code records.
//!
//! Log lines keep the `target` of the module that used to write them, so their `component`
//! and any per-module log filter stay what they were.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use metrics::Unit;

/// Something that happened and is worth a metric (and usually a log line).
pub trait InternalEvent {
    /// Records the event's metrics and writes its log line.
    fn emit(self);
}

/// Emits `event`: records its metrics and writes its log line.
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

/// What kind of Prometheus metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Set to the current value.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One metric the code records.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Label keys, in the order they are given.
    pub labels: &'static [&'static str],
    /// Unit (if any) and help text, registered at start-up (Prometheus' `# HELP`).
    pub help: (Option<Unit>, &'static str),
}

const fn metric(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: (Option<Unit>, &'static str),
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter, Gauge, Histogram};

/// Every metric the events below record.
pub const METRICS: &[Metric] = &[
    metric(
        "mairust_imap_sessions_total",
        Counter,
        &["listener"],
        (None, "IMAP sessions started, by listener (imap, imaps)"),
    ),
    metric(
        "mairust_imap_commands_total",
        Counter,
        &["command", "result"],
        (
            None,
            "IMAP commands answered, by command and result (ok, no, bad)",
        ),
    ),
    metric(
        "mairust_imap_idle_sessions",
        Gauge,
        &[],
        (None, "IMAP sessions in IDLE now"),
    ),
    metric(
        "mairust_imap_auth_failures_total",
        Counter,
        &[],
        (None, "IMAP sign-ins refused for wrong credentials"),
    ),
    metric(
        "mairust_pop3_sessions_total",
        Counter,
        &["listener"],
        (None, "POP3 sessions started, by listener (pop3, pop3s)"),
    ),
    metric(
        "mairust_pop3_commands_total",
        Counter,
        &["command", "result"],
        (
            None,
            "POP3 commands answered, by command and result (ok, err)",
        ),
    ),
    metric(
        "mairust_pop3_auth_failures_total",
        Counter,
        &[],
        (None, "POP3 sign-ins refused for wrong credentials"),
    ),
    metric(
        "mairust_smtp_connections_total",
        Counter,
        &["listener"],
        (None, "SMTP connections accepted, by listener"),
    ),
    metric(
        "mairust_smtp_connections_active",
        Gauge,
        &["listener"],
        (None, "SMTP connections open now, by listener"),
    ),
    metric(
        "mairust_smtp_connections_rejected_total",
        Counter,
        &["listener"],
        (None, "SMTP connections refused by a connection limit"),
    ),
    metric(
        "mairust_smtp_messages_accepted_total",
        Counter,
        &["listener"],
        (
            None,
            "Messages acknowledged with 250 after DATA or BDAT LAST",
        ),
    ),
    metric(
        "mairust_smtp_messages_rejected_total",
        Counter,
        &["reason"],
        (None, "Messages or recipients refused, by reason"),
    ),
    metric(
        "mairust_smtp_received_bytes_total",
        Counter,
        &["listener"],
        (Some(Unit::Bytes), "Bytes of accepted messages"),
    ),
    metric(
        "mairust_smtp_auth_failures_total",
        Counter,
        &[],
        (None, "Failed SMTP AUTH attempts"),
    ),
    metric(
        "mairust_smtp_acceptance_seconds",
        Histogram,
        &[],
        (
            Some(Unit::Seconds),
            "Time from end of DATA to the 250 reply",
        ),
    ),
    metric(
        "mairust_smtp_session_failures_total",
        Counter,
        &["listener"],
        (
            None,
            "SMTP sessions that failed (panicked) and had their connection closed, by listener",
        ),
    ),
    metric(
        "mairust_storage_blob_write_seconds",
        Histogram,
        &[],
        (
            Some(Unit::Seconds),
            "Time to write and fsync a message body",
        ),
    ),
    metric(
        "mairust_storage_commit_seconds",
        Histogram,
        &[],
        (
            Some(Unit::Seconds),
            "Time of one group commit of message metadata",
        ),
    ),
    metric(
        "mairust_storage_commit_batch_size",
        Histogram,
        &[],
        (None, "Messages per group commit"),
    ),
    metric(
        "mairust_storage_commit_timeouts_total",
        Counter,
        &[],
        (
            None,
            "Sessions that waited longer than database.commit_timeout for their commit",
        ),
    ),
    metric(
        "mairust_actor_restarts_total",
        Counter,
        &["actor"],
        (
            None,
            "Supervised actors restarted after a failure, by actor",
        ),
    ),
    metric(
        "mairust_actor_mailbox_depth",
        Gauge,
        &["actor"],
        (
            None,
            "Requests waiting in a bounded actor mailbox (or for a place in it), by actor",
        ),
    ),
    metric(
        "mairust_api_requests_total",
        Counter,
        &["method", "status"],
        (None, "REST API requests, by method and status"),
    ),
    metric(
        "mairust_web_proxy_requests_total",
        Counter,
        &["status"],
        (
            None,
            "Requests the web role proxied to web.api_url, by the status returned to the client",
        ),
    ),
    metric(
        "mairust_queue_depth",
        Gauge,
        &["status"],
        (
            None,
            "Queue rows waiting for delivery on this node's partitions, by status",
        ),
    ),
    metric(
        "mairust_queue_partition_depth",
        Gauge,
        &["partition", "status"],
        (
            None,
            "Queue rows waiting for delivery in one owned partition, by status",
        ),
    ),
    metric(
        "mairust_delivery_attempts_total",
        Counter,
        &["result"],
        (
            None,
            "Delivery attempts of queue rows, by result (delivered, deferred, failed)",
        ),
    ),
    metric(
        "mairust_delivery_connections_total",
        Counter,
        &["reused"],
        (
            None,
            "Outbound SMTP connections used for a delivery, by whether an idle one was reused",
        ),
    ),
    metric(
        "mairust_delivery_latency_seconds",
        Histogram,
        &[],
        (
            Some(Unit::Seconds),
            "Time from acceptance to the remote server's 250",
        ),
    ),
    metric(
        "mairust_bounces_total",
        Counter,
        &[],
        (
            None,
            "Delivery status notifications (bounces) queued to senders",
        ),
    ),
    metric(
        "mairust_bounce_failures_total",
        Counter,
        &[],
        (None, "Bounces that could not be built yet and are retried"),
    ),
    metric(
        "mairust_cluster_partitions_owned",
        Gauge,
        &[],
        (None, "Queue partitions whose lease this node holds"),
    ),
    metric(
        "mairust_cluster_lease_renew_seconds",
        Histogram,
        &[],
        (
            Some(Unit::Seconds),
            "Time one renewal of all of this node's leases took",
        ),
    ),
    metric(
        "mairust_cluster_takeovers_total",
        Counter,
        &[],
        (
            None,
            "Partitions this node acquired that another node had held",
        ),
    ),
    metric(
        "mairust_queue_fenced_writes_rejected_total",
        Counter,
        &[],
        (
            None,
            "Queue writes refused because the partition's lease had passed to another epoch",
        ),
    ),
    metric(
        "mairust_cluster_members",
        Gauge,
        &["state"],
        (
            None,
            "Cluster members this node knows, by state (itself included)",
        ),
    ),
];

/// Registers the unit and help text of every metric in [`METRICS`].
pub fn describe_metrics() {
    for m in METRICS {
        let (unit, help) = m.help;
        match (m.kind, unit) {
            (Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, help),
            (Counter, None) => metrics::describe_counter!(m.name, help),
            (Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, help),
            (Gauge, None) => metrics::describe_gauge!(m.name, help),
            (Histogram, Some(unit)) => metrics::describe_histogram!(m.name, unit, help),
            (Histogram, None) => metrics::describe_histogram!(m.name, help),
        }
    }
}

const SMTP_CONNECTION: &str = "mairust::smtp::connection";
const LISTENER: &str = "mairust::net::listener";
const SUPERVISOR: &str = "mairust::actors::supervisor";
const QUEUE_MANAGER: &str = "mairust::delivery::queue_manager";
const PARTITION: &str = "mairust::delivery::partition";

// --- SMTP -------------------------------------------------------------------------------

/// An IMAP session started.
pub struct ImapSessionOpened {
    /// `imap` or `imaps`.
    pub listener: &'static str,
}

impl InternalEvent for ImapSessionOpened {
    fn emit(self) {
        metrics::counter!("mairust_imap_sessions_total", "listener" => self.listener).increment(1);
    }
}

/// An IMAP command was answered.
pub struct ImapCommand {
    /// The command (a known name or `unknown`).
    pub command: &'static str,
    /// `ok`, `no` or `bad`.
    pub result: &'static str,
}

impl InternalEvent for ImapCommand {
    fn emit(self) {
        metrics::counter!("mairust_imap_commands_total", "command" => self.command, "result" => self.result)
            .increment(1);
    }
}

/// An IMAP session started or ended IDLE.
pub struct ImapIdle {
    /// Started (true) or ended.
    pub started: bool,
}

impl InternalEvent for ImapIdle {
    fn emit(self) {
        let gauge = metrics::gauge!("mairust_imap_idle_sessions");
        if self.started {
            gauge.increment(1.0);
        } else {
            gauge.decrement(1.0);
        }
    }
}

/// An IMAP sign-in was refused for wrong credentials.
pub struct ImapAuthFailed<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// The user name given.
    pub user: &'a str,
}

impl InternalEvent for ImapAuthFailed<'_> {
    fn emit(self) {
        metrics::counter!("mairust_imap_auth_failures_total").increment(1);
        tracing::warn!(target: "mairust::imap::connection", peer = %self.peer, user = self.user, "IMAP sign-in failed");
    }
}

/// A POP3 session started.
pub struct Pop3SessionOpened {
    /// `pop3` or `pop3s`.
    pub listener: &'static str,
}

impl InternalEvent for Pop3SessionOpened {
    fn emit(self) {
        metrics::counter!("mairust_pop3_sessions_total", "listener" => self.listener).increment(1);
    }
}

/// A POP3 command was answered.
pub struct Pop3Command {
    /// The command (a known verb or `unknown`).
    pub command: &'static str,
    /// `ok` or `err`.
    pub result: &'static str,
}

impl InternalEvent for Pop3Command {
    fn emit(self) {
        metrics::counter!("mairust_pop3_commands_total", "command" => self.command, "result" => self.result)
            .increment(1);
    }
}

/// A POP3 sign-in was refused for wrong credentials.
pub struct Pop3AuthFailed<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// The user name given.
    pub user: &'a str,
}

impl InternalEvent for Pop3AuthFailed<'_> {
    fn emit(self) {
        metrics::counter!("mairust_pop3_auth_failures_total").increment(1);
        tracing::warn!(target: "mairust::pop3::connection", peer = %self.peer, user = self.user, "POP3 sign-in failed");
    }
}

/// A session started on a listener's accepted connection.
pub struct SmtpConnectionOpened {
    /// The listener's label (`smtp`, `submission`).
    pub listener: &'static str,
}

impl InternalEvent for SmtpConnectionOpened {
    fn emit(self) {
        metrics::counter!("mairust_smtp_connections_total", "listener" => self.listener)
            .increment(1);
        metrics::gauge!("mairust_smtp_connections_active", "listener" => self.listener)
            .increment(1.0);
    }
}

/// A session ended, however it ended.
pub struct SmtpConnectionClosed {
    /// The listener's label.
    pub listener: &'static str,
}

impl InternalEvent for SmtpConnectionClosed {
    fn emit(self) {
        metrics::gauge!("mairust_smtp_connections_active", "listener" => self.listener)
            .decrement(1.0);
    }
}

/// A connection refused by the connection limits.
pub struct SmtpConnectionRefused<'a> {
    /// The listener's label.
    pub listener: &'static str,
    /// The client.
    pub peer: SocketAddr,
    /// Which limit.
    pub limit: &'a dyn fmt::Debug,
}

impl InternalEvent for SmtpConnectionRefused<'_> {
    fn emit(self) {
        metrics::counter!("mairust_smtp_connections_rejected_total", "listener" => self.listener)
            .increment(1);
        tracing::info!(target: LISTENER, listener = self.listener, peer = %self.peer, limit = ?self.limit, "connection refused by limit");
    }
}

/// A session actor failed (panicked); its connection was closed.
pub struct SmtpSessionFailed<'a> {
    /// The listener's label.
    pub listener: &'static str,
    /// Why.
    pub error: &'a dyn fmt::Display,
}

impl InternalEvent for SmtpSessionFailed<'_> {
    fn emit(self) {
        metrics::counter!("mairust_smtp_session_failures_total", "listener" => self.listener)
            .increment(1);
        tracing::error!(target: LISTENER, listener = self.listener, error = %self.error, "session failed; its connection was closed");
    }
}

/// An SMTP AUTH attempt was refused.
pub struct SmtpAuthFailed<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// The user name given.
    pub user: &'a str,
    /// The SASL mechanism.
    pub mechanism: &'a dyn fmt::Debug,
}

impl InternalEvent for SmtpAuthFailed<'_> {
    fn emit(self) {
        metrics::counter!("mairust_smtp_auth_failures_total").increment(1);
        tracing::warn!(target: SMTP_CONNECTION, peer = %self.peer, user = self.user, mechanism = ?self.mechanism, "SMTP AUTH failed");
    }
}

/// A sender, recipient or message was refused (the reply says why; no log line of its own).
pub struct SmtpMessageRejected {
    /// Low-cardinality reason: `unknown_user`, `relay_denied`, `commit_failed`, ...
    pub reason: &'static str,
}

impl InternalEvent for SmtpMessageRejected {
    fn emit(self) {
        metrics::counter!("mairust_smtp_messages_rejected_total", "reason" => self.reason)
            .increment(1);
    }
}

/// A submission whose `From:`/`Sender:` names an address the user does not own.
pub struct SmtpForeignHeaderSender<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// The authenticated user.
    pub user: &'a str,
    /// The first foreign address.
    pub from: &'a str,
}

/// Logged only: the refusal that follows is counted with the others
/// ([`SmtpMessageRejected`], reason `header_sender_not_owned`).
impl InternalEvent for SmtpForeignHeaderSender<'_> {
    fn emit(self) {
        tracing::warn!(target: SMTP_CONNECTION, peer = %self.peer, user = self.user, from = %self.from, "submission with a From/Sender the user does not own");
    }
}

/// A message was stored durably and acknowledged with `250`.
pub struct SmtpMessageAccepted<'a> {
    /// The listener's label.
    pub listener: &'static str,
    /// Acceptance id.
    pub id: &'a str,
    /// The client.
    pub peer: SocketAddr,
    /// Envelope sender.
    pub from: &'a str,
    /// Number of envelope recipients.
    pub recipients: usize,
    /// Stored size in bytes.
    pub size: usize,
    /// From the end of the data to the acknowledgement.
    pub elapsed: Duration,
}

impl InternalEvent for SmtpMessageAccepted<'_> {
    fn emit(self) {
        metrics::counter!("mairust_smtp_messages_accepted_total", "listener" => self.listener)
            .increment(1);
        metrics::counter!("mairust_smtp_received_bytes_total", "listener" => self.listener)
            .increment(self.size as u64);
        metrics::histogram!("mairust_smtp_acceptance_seconds").record(self.elapsed.as_secs_f64());
        tracing::info!(
            target: SMTP_CONNECTION,
            id = %self.id,
            peer = %self.peer,
            from = %self.from,
            recipients = self.recipients,
            size = self.size,
            "message accepted"
        );
    }
}

// --- Storage ----------------------------------------------------------------------------

/// A message body was written and fsynced to the blob store.
pub struct BlobWritten {
    /// How long the write took.
    pub elapsed: Duration,
}

impl InternalEvent for BlobWritten {
    fn emit(self) {
        metrics::histogram!("mairust_storage_blob_write_seconds")
            .record(self.elapsed.as_secs_f64());
    }
}

/// One group commit ran (whether or not it succeeded).
pub struct StorageBatchCommitted {
    /// How long it took.
    pub elapsed: Duration,
    /// Messages in the batch.
    pub batch_size: usize,
}

impl InternalEvent for StorageBatchCommitted {
    fn emit(self) {
        metrics::histogram!("mairust_storage_commit_seconds").record(self.elapsed.as_secs_f64());
        metrics::histogram!("mairust_storage_commit_batch_size").record(self.batch_size as f64);
    }
}

/// A session gave up waiting for its group commit.
pub struct StorageCommitTimedOut;

impl InternalEvent for StorageCommitTimedOut {
    fn emit(self) {
        metrics::counter!("mairust_storage_commit_timeouts_total").increment(1);
    }
}

// --- Actors -----------------------------------------------------------------------------

/// The supervisor is restarting a failed child after a backoff.
pub struct ActorRestarted {
    /// The child's name.
    pub actor: &'static str,
    /// The backoff before the restart.
    pub delay: Duration,
    /// Consecutive failures so far.
    pub attempt: u32,
}

impl InternalEvent for ActorRestarted {
    fn emit(self) {
        metrics::counter!("mairust_actor_restarts_total", "actor" => self.actor).increment(1);
        tracing::warn!(
            target: SUPERVISOR,
            actor = self.actor,
            delay_ms = self.delay.as_millis() as u64,
            attempt = self.attempt,
            "restarting actor"
        );
    }
}

/// The requests waiting in a bounded actor's mailbox, or for a place in it, changed.
pub struct ActorMailboxDepth {
    /// The actor's name.
    pub actor: &'static str,
    /// Requests waiting.
    pub depth: usize,
}

impl InternalEvent for ActorMailboxDepth {
    fn emit(self) {
        metrics::gauge!("mairust_actor_mailbox_depth", "actor" => self.actor)
            .set(self.depth as f64);
    }
}

/// A partition queue failed; it is restarted after the backoff (the restart itself is an
/// [`ActorRestarted`]).
pub struct PartitionQueueExited<'a> {
    /// The partition.
    pub partition: u32,
    /// The exit reason.
    pub reason: &'a dyn fmt::Display,
    /// The backoff before the restart.
    pub restart_in: Duration,
}

impl InternalEvent for PartitionQueueExited<'_> {
    fn emit(self) {
        tracing::error!(
            target: QUEUE_MANAGER,
            partition = self.partition,
            reason = %self.reason,
            restart_in_ms = self.restart_in.as_millis() as u64,
            "partition queue exited; restarting after the backoff"
        );
    }
}

// --- Partition ownership --------------------------------------------------------------

/// How many partitions this node holds now.
pub struct PartitionsOwned {
    /// Partitions.
    pub count: usize,
}

impl InternalEvent for PartitionsOwned {
    fn emit(self) {
        metrics::gauge!("mairust_cluster_partitions_owned").set(self.count as f64);
    }
}

/// One renewal of every lease this node holds succeeded.
pub struct LeasesRenewed {
    /// How long the statement took.
    pub elapsed: Duration,
    /// Leases still held.
    pub held: usize,
}

impl InternalEvent for LeasesRenewed {
    fn emit(self) {
        metrics::histogram!("mairust_cluster_lease_renew_seconds")
            .record(self.elapsed.as_secs_f64());
        if self.elapsed > Duration::from_secs(1) {
            tracing::warn!(target: QUEUE_MANAGER, elapsed_ms = self.elapsed.as_millis() as u64, held = self.held, "lease renewal was slow");
        }
    }
}

/// This node acquired a partition's lease.
pub struct PartitionAcquired {
    /// The partition.
    pub partition: u32,
    /// Its new epoch.
    pub epoch: i64,
    /// Whether another holder had it before (epoch > 1): a takeover.
    pub takeover: bool,
}

impl InternalEvent for PartitionAcquired {
    fn emit(self) {
        if self.takeover {
            metrics::counter!("mairust_cluster_takeovers_total").increment(1);
        }
        tracing::info!(target: QUEUE_MANAGER, partition = self.partition, epoch = self.epoch, takeover = self.takeover, "partition acquired");
    }
}

// --- Queue and delivery -----------------------------------------------------------------

/// A partition's write was refused by its fence (another owner or a newer epoch holds the
/// lease); the partition's queue stops.
pub struct FencedWriteRejected {
    /// The partition (logged only: the metric has no label, to keep its cardinality low).
    pub partition: u32,
}

impl InternalEvent for FencedWriteRejected {
    fn emit(self) {
        metrics::counter!("mairust_queue_fenced_writes_rejected_total").increment(1);
        tracing::warn!(target: PARTITION, partition = self.partition, "queue write refused: the partition's lease is held by another owner or epoch; stopping its queue");
    }
}

/// Pending rows of one partition in one status, as last counted.
pub struct QueuePartitionDepth {
    /// The partition.
    pub partition: u32,
    /// `queued` or `deferred`.
    pub status: &'static str,
    /// Rows.
    pub count: i64,
}

impl InternalEvent for QueuePartitionDepth {
    fn emit(self) {
        metrics::gauge!("mairust_queue_partition_depth", "partition" => self.partition.to_string(), "status" => self.status)
            .set(self.count as f64);
    }
}

/// Pending rows of all partitions in one status, as last counted.
pub struct QueueDepth {
    /// `queued` or `deferred`.
    pub status: &'static str,
    /// Rows.
    pub count: i64,
}

impl InternalEvent for QueueDepth {
    fn emit(self) {
        metrics::gauge!("mairust_queue_depth", "status" => self.status).set(self.count as f64);
    }
}

/// A delivery got its outbound connection: a new one, or an idle one from the cache.
pub struct DeliveryConnectionUsed {
    /// The connection was idle in the cache.
    pub reused: bool,
}

impl InternalEvent for DeliveryConnectionUsed {
    fn emit(self) {
        let reused = if self.reused { "true" } else { "false" };
        metrics::counter!("mairust_delivery_connections_total", "reused" => reused).increment(1);
    }
}

/// A recipient was delivered (the remote server answered `250`).
pub struct DeliverySucceeded<'a> {
    /// Queue row id.
    pub id: i64,
    /// The message's acceptance id.
    pub message: &'a str,
    /// The recipient.
    pub recipient: &'a str,
    /// The remote MTA, or empty.
    pub mta: &'a str,
    /// Its reply.
    pub reply: &'a str,
    /// From acceptance to the remote `250`, in seconds.
    pub latency_seconds: f64,
}

impl InternalEvent for DeliverySucceeded<'_> {
    fn emit(self) {
        metrics::counter!("mairust_delivery_attempts_total", "result" => "delivered").increment(1);
        metrics::histogram!("mairust_delivery_latency_seconds").record(self.latency_seconds);
        tracing::info!(target: PARTITION, id = self.id, message = %self.message, recipient = %self.recipient, mta = self.mta, reply = %self.reply, "delivered");
    }
}

/// A delivery attempt failed temporarily and will be retried.
pub struct DeliveryDeferred<'a> {
    /// Queue row id.
    pub id: i64,
    /// The recipient.
    pub recipient: &'a str,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// Wait before the next attempt.
    pub retry_in: Duration,
    /// What went wrong.
    pub error: &'a str,
}

impl InternalEvent for DeliveryDeferred<'_> {
    fn emit(self) {
        metrics::counter!("mairust_delivery_attempts_total", "result" => "deferred").increment(1);
        tracing::info!(target: PARTITION, id = self.id, recipient = %self.recipient, attempts = self.attempts, retry_in_s = self.retry_in.as_secs(), error = %self.error, "delivery deferred");
    }
}

/// A recipient failed for good (permanent error or queue lifetime over).
pub struct DeliveryFailed<'a> {
    /// Queue row id.
    pub id: i64,
    /// The recipient.
    pub recipient: &'a str,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// The diagnostic that goes into the bounce.
    pub error: &'a str,
}

impl InternalEvent for DeliveryFailed<'_> {
    fn emit(self) {
        metrics::counter!("mairust_delivery_attempts_total", "result" => "failed").increment(1);
        tracing::warn!(target: PARTITION, id = self.id, recipient = %self.recipient, attempts = self.attempts, error = %self.error, "delivery failed");
    }
}

/// A bounce could not be built; its recipients stay queued and are retried.
pub struct BounceBuildFailed<'a> {
    /// The message's acceptance id.
    pub message: &'a str,
    /// Why.
    pub error: &'a dyn fmt::Display,
    /// Wait before the retry.
    pub retry_in: Duration,
}

impl InternalEvent for BounceBuildFailed<'_> {
    fn emit(self) {
        tracing::warn!(target: PARTITION, message = %self.message, error = %self.error, retry_in_s = self.retry_in.as_secs(), "cannot build the bounce; keeping the recipients queued");
        metrics::counter!("mairust_bounce_failures_total").increment(1);
    }
}

/// Bounces were committed to the queue (possibly none).
pub struct BouncesQueued {
    /// How many.
    pub count: usize,
}

impl InternalEvent for BouncesQueued {
    fn emit(self) {
        metrics::counter!("mairust_bounces_total").increment(self.count as u64);
    }
}

// --- API --------------------------------------------------------------------------------

/// The REST API answered a request.
pub struct ApiRequestCompleted<'a> {
    /// The HTTP method, as the client sent it.
    pub method: &'a str,
    /// The status code.
    pub status: u16,
}

/// A request method as a label: the methods HTTP defines, anything else `other`. The
/// method is the client's text, and an unauthenticated request with an invented one must
/// not add a series (of any length) to `/metrics`.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

impl InternalEvent for ApiRequestCompleted<'_> {
    fn emit(self) {
        metrics::counter!(
            "mairust_api_requests_total",
            "method" => method_label(self.method),
            "status" => self.status.to_string()
        )
        .increment(1);
    }
}

/// The web role answered a request it proxies to `web.api_url` (with the upstream's status,
/// or its own 502/504/413 when the upstream gave none).
pub struct WebProxyRequestCompleted {
    /// The status code returned to the client.
    pub status: u16,
}

impl InternalEvent for WebProxyRequestCompleted {
    fn emit(self) {
        metrics::counter!(
            "mairust_web_proxy_requests_total",
            "status" => self.status.to_string()
        )
        .increment(1);
    }
}

// --- Cluster ----------------------------------------------------------------------------

/// The cluster membership view changed; carries the new count of members in each state.
pub struct ClusterMembersChanged {
    /// Members alive, this node included.
    pub alive: usize,
    /// Members suspected of being down.
    pub suspect: usize,
    /// Members declared down and not yet forgotten.
    pub down: usize,
}

impl InternalEvent for ClusterMembersChanged {
    fn emit(self) {
        for (state, count) in [
            ("alive", self.alive),
            ("suspect", self.suspect),
            ("down", self.down),
        ] {
            metrics::gauge!("mairust_cluster_members", "state" => state).set(count as f64);
        }
        tracing::debug!(
            target: "mairust::cluster",
            alive = self.alive,
            suspect = self.suspect,
            down = self.down,
            "cluster membership changed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The metrics README's "Metrics" section lists: each backticked `mairust_*` name with the
    /// label keys written after it in braces (none when there are no braces).
    fn readme_metrics() -> BTreeMap<String, Vec<String>> {
        let readme = include_str!("../README.md");
        let start = readme
            .find("\n## Metrics\n")
            .expect("README has a \"## Metrics\" section");
        let section = &readme[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        section
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|code| code.starts_with("mairust_"))
            .map(|code| match code.split_once('{') {
                Some((name, labels)) => (
                    name.to_string(),
                    labels
                        .trim_end_matches('}')
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .collect(),
                ),
                None => (code.to_string(), Vec::new()),
            })
            .collect()
    }

    /// Every `.rs` file under `src/`, with its path.
    fn sources() -> Vec<(std::path::PathBuf, String)> {
        let mut found = Vec::new();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("read source");
                    found.push((path, text));
                }
            }
        }
        found
    }

    /// The metric names this module's macro calls record, with their kind.
    fn recorded() -> Vec<(String, MetricKind)> {
        let source = include_str!("events.rs");
        let mut found = Vec::new();
        for (macro_name, kind) in [
            ("counter", Counter),
            ("gauge", Gauge),
            ("histogram", Histogram),
        ] {
            let call = format!("metrics::{macro_name}!(");
            for (at, _) in source.match_indices(&call) {
                let rest = source[at + call.len()..].trim_start();
                if let Some(quoted) = rest.strip_prefix('"') {
                    let name = &quoted[..quoted.find('"').expect("closing quote")];
                    found.push((name.to_string(), kind));
                }
            }
        }
        found
    }

    #[test]
    fn metrics_are_recorded_here_only() {
        // A metric recorded elsewhere escapes METRICS, its help text and the README check.
        let mut elsewhere = Vec::new();
        for (path, text) in sources() {
            if path.ends_with("src/events.rs") {
                continue;
            }
            for call in ["counter!(", "gauge!(", "histogram!("] {
                for (line, _) in text.lines().enumerate().filter(|(_, l)| l.contains(call)) {
                    elsewhere.push(format!("{}:{}", path.display(), line + 1));
                }
            }
        }
        assert!(
            elsewhere.is_empty(),
            "record metrics through a typed event in src/events.rs: {elsewhere:#?}"
        );
    }

    #[test]
    fn every_metric_has_help_text() {
        for m in METRICS {
            let (_, help) = m.help;
            assert!(help.len() > 10, "{} needs a HELP text", m.name);
            assert!(!help.contains('\n'), "{}: HELP is one line", m.name);
        }
    }

    #[test]
    fn request_methods_are_labels_of_a_known_set() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("DELETE"), "DELETE");
        assert_eq!(method_label("M123X"), "other");
        assert_eq!(method_label("get"), "other");
        assert_eq!(method_label(&"X".repeat(8000)), "other");
    }

    #[test]
    fn readme_lists_exactly_the_metrics_the_code_records() {
        let readme = readme_metrics();
        let mut problems = Vec::new();
        for m in METRICS {
            match readme.get(m.name) {
                None => problems.push(format!(
                    "{} is recorded but README does not list it",
                    m.name
                )),
                Some(labels) if labels != m.labels => problems.push(format!(
                    "{} has labels {:?} but README lists {:?}",
                    m.name, m.labels, labels
                )),
                Some(_) => {}
            }
        }
        for name in readme.keys() {
            if !METRICS.iter().any(|m| m.name == name) {
                problems.push(format!(
                    "README lists {name} but the code does not record it"
                ));
            }
        }
        assert!(problems.is_empty(), "README \"Metrics\": {problems:#?}");
    }

    #[test]
    fn the_table_matches_the_macro_calls() {
        let recorded = recorded();
        for (name, kind) in &recorded {
            let entry = METRICS.iter().find(|m| m.name == name);
            assert!(
                entry.is_some(),
                "{name} is recorded but missing from METRICS"
            );
            assert_eq!(entry.map(|m| m.kind), Some(*kind), "kind of {name}");
        }
        for m in METRICS {
            assert!(
                recorded.iter().any(|(name, _)| name == m.name),
                "{} is in METRICS but nothing records it",
                m.name
            );
            assert_eq!(
                METRICS.iter().filter(|other| other.name == m.name).count(),
                1,
                "{} is listed twice",
                m.name
            );
        }
    }
}
