//! Delivery workers: route a destination domain, open SMTP connections (bounded per
//! destination host), send a batch of messages over each, and report every recipient's
//! result to the partition queue. Also builds bounces for failed recipients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::QueueHandle;
use super::connection_cache::ConnectionCache;
use super::lease_deadline::LeaseDeadline;
use crate::config::{Config, DeliveryTls};
use crate::delivery::client::{ClientConfig, Credentials, RecipientResult, TlsPolicy, Transaction};
use crate::delivery::dsn::{self, BounceError, FailedRecipient};
use crate::delivery::outbound;
use crate::delivery::routing::Router;
use crate::events::{self, DeliveryConnectionUsed};
use crate::store::new_id;
use crate::store::{
    AcceptedMessage, LocalDelivery, QueueEntry, RecipientLookup, RemoteRecipient, Stores,
    now_millis, partition_of,
};

/// Everything delivery needs, shared by all partitions of a node.
pub struct DeliveryContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// Metadata, queue and blobs.
    pub stores: Stores,
    /// MX or smarthost routing.
    pub router: Router,
    /// Connections per destination host.
    pub limiter: DestinationLimiter,
    /// Idle connections kept for the next delivery to their host.
    pub connections: ConnectionCache,
    /// TLS for STARTTLS to remote servers.
    pub tls: Arc<rustls::ClientConfig>,
    /// Hints for bounces queued to other partitions.
    pub queue: QueueHandle,
    /// The group commit that records results.
    pub writer: crate::actors::WriterHandle,
}

/// The result of one queue row's attempt.
#[derive(Debug, Clone)]
pub struct EntryResult {
    /// The row as it was scheduled.
    pub entry: QueueEntry,
    /// What happened.
    pub outcome: Outcome,
    /// The server's reply or our reason.
    pub detail: String,
    /// Enhanced status code (`5.1.1`), when known.
    pub status: Option<String>,
    /// The host that answered.
    pub remote_mta: Option<String>,
}

/// Outcome of an attempt for one recipient: the SMTP client's, whatever decided it (the
/// remote server, routing, or a missing body).
pub use crate::delivery::client::Outcome;

/// Caps concurrent connections per destination host, across all partitions of this node.
#[derive(Debug)]
pub struct DestinationLimiter {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl DestinationLimiter {
    /// At most `per_host` connections to one host.
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a connection slot to `host`.
    pub async fn acquire(&self, host: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            if hosts.len() > 10_000 {
                hosts.retain(|_, s| s.available_permits() < self.per_host);
            }
            hosts
                .entry(host.to_ascii_lowercase())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        // The semaphore is never closed.
        match semaphore.acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("destination semaphores are never closed"),
        }
    }
}

/// Splits one domain's rows into connection batches of at most `per_connection` messages.
pub fn batches(entries: Vec<QueueEntry>, per_connection: usize) -> Vec<Vec<QueueEntry>> {
    let mut by_message: Vec<(String, Vec<QueueEntry>)> = Vec::new();
    for e in entries {
        match by_message.iter_mut().find(|(m, _)| *m == e.message_id) {
            Some((_, list)) => list.push(e),
            None => by_message.push((e.message_id.clone(), vec![e])),
        }
    }
    by_message
        .chunks(per_connection.max(1))
        .map(|chunk| chunk.iter().flat_map(|(_, e)| e.iter().cloned()).collect())
        .collect()
}

fn all(entries: &[QueueEntry], outcome: Outcome, detail: &str, status: &str) -> Vec<EntryResult> {
    entries
        .iter()
        .map(|entry| EntryResult {
            entry: entry.clone(),
            outcome,
            detail: detail.to_string(),
            status: Some(status.to_string()),
            remote_mta: None,
        })
        .collect()
}

fn client_config(config: &Config) -> ClientConfig {
    ClientConfig {
        helo_name: config.server.hostname.clone(),
        tls: match config.delivery.tls {
            DeliveryTls::Opportunistic => TlsPolicy::Opportunistic,
            DeliveryTls::Required => TlsPolicy::Required,
            DeliveryTls::None => TlsPolicy::Disabled,
        },
        tls_available: true,
        auth: config
            .delivery
            .relay_auth
            .as_ref()
            .filter(|_| config.delivery.relay_host.is_some())
            .map(|a| Credentials {
                username: a.username.clone(),
                password: a.password.clone(),
            }),
        allow_plain_auth: false,
    }
}

/// Why a connection was not even opened.
const DEADLINE_PASSED_BEFORE_CONNECT: &str =
    "lease deadline passed before the connection; the next owner retries";

/// Makes results durable as they arrive: returns the task committing them (the partition
/// supplies it, with its lease).
pub type RecordResults = Arc<dyn Fn(Vec<EntryResult>) -> tokio::task::JoinHandle<()> + Send + Sync>;

/// The results of one connection's transactions as the server gives them: each message's
/// definitive results (delivered, refused) are recorded at once through [`RecordResults`],
/// while the next message is being sent, so that a crash repeats at most one delivery.
/// Temporary results wait for the end of the batch, when another host may still be tried.
struct EarlyRecorder<'a> {
    groups: &'a [(Transaction, Vec<QueueEntry>)],
    host: &'a str,
    record: &'a RecordResults,
    /// Queue rows whose results were handed to `record`.
    recorded: std::collections::HashSet<i64>,
}

impl outbound::Recorder for EarlyRecorder<'_> {
    fn record(
        &mut self,
        index: usize,
        results: &[RecipientResult],
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (_, list) = self.groups.get(index)?;
        let definitive: Vec<EntryResult> = entry_results(list, results, self.host)
            .into_iter()
            .filter(|r| r.outcome != Outcome::Temporary)
            .collect();
        if definitive.is_empty() {
            return None;
        }
        self.recorded.extend(definitive.iter().map(|r| r.entry.id));
        Some((self.record)(definitive))
    }
}

/// The results of `list` (one message's rows) from its transaction's recipient results.
fn entry_results(list: &[QueueEntry], results: &[RecipientResult], host: &str) -> Vec<EntryResult> {
    list.iter()
        .map(|entry| {
            match results
                .iter()
                .find(|r| r.recipient.eq_ignore_ascii_case(&entry.recipient))
            {
                Some(r) => EntryResult {
                    entry: entry.clone(),
                    outcome: r.outcome,
                    detail: r.reply.summary(),
                    status: r.reply.status.map(|(a, b, c)| format!("{a}.{b}.{c}")),
                    remote_mta: Some(host.to_string()),
                },
                None => EntryResult {
                    entry: entry.clone(),
                    outcome: Outcome::Temporary,
                    detail: "no result reported for this recipient".into(),
                    status: Some("4.3.0".into()),
                    remote_mta: Some(host.to_string()),
                },
            }
        })
        .collect()
}

/// Attempts delivery of `entries` (all for `domain`) and reports each row's result: the
/// definitive ones through `record` as they arrive, the rest as the return value. No
/// connection is opened and no end of data sent once the partition's lease `deadline` has
/// passed: those rows are temporary failures, left to the lease's next owner.
pub async fn deliver(
    ctx: &DeliveryContext,
    domain: &str,
    entries: Vec<QueueEntry>,
    deadline: &LeaseDeadline,
    record: &RecordResults,
) -> Vec<EntryResult> {
    let destinations = match ctx.router.route(domain).await {
        Ok(d) => d,
        Err(e) => {
            let outcome = if e.is_permanent() {
                Outcome::Permanent
            } else {
                Outcome::Temporary
            };
            return all(&entries, outcome, &e.to_string(), e.status());
        }
    };

    // One transaction per message: its recipients in this domain.
    let mut by_message: Vec<Vec<QueueEntry>> = Vec::new();
    for e in entries {
        match by_message
            .iter_mut()
            .find(|list| list[0].message_id == e.message_id)
        {
            Some(list) => list.push(e),
            None => by_message.push(vec![e]),
        }
    }
    // Every body of the connection at once (one query for those in their rows), not one
    // read after the other.
    let keys: Vec<&str> = by_message
        .iter()
        .map(|list| list[0].blob_key.as_str())
        .collect();
    let bodies = ctx.stores.blobs.get_many(&keys).await;
    let mut groups: Vec<(Transaction, Vec<QueueEntry>)> = Vec::new();
    let mut results = Vec::new();
    for (list, body) in by_message.into_iter().zip(bodies) {
        let e = &list[0];
        match body {
            Ok(body) => {
                let smtputf8 = !e.sender.is_ascii() || list.iter().any(|e| !e.recipient.is_ascii());
                let body_8bit = !body.is_ascii();
                groups.push((
                    Transaction {
                        mail_from: e.sender.clone(),
                        rcpt_to: list.iter().map(|e| e.recipient.clone()).collect(),
                        body: Arc::from(body),
                        smtputf8,
                        body_8bit,
                    },
                    list,
                ));
            }
            Err(error) => {
                tracing::error!(message = %e.message_id, %error, "message body unavailable for delivery");
                results.extend(all(
                    &list,
                    Outcome::Temporary,
                    &format!("message body unavailable: {error}"),
                    "4.3.0",
                ));
            }
        }
    }
    if groups.is_empty() {
        return results;
    }

    let params = outbound::ConnectionParams {
        connect_timeout: ctx.config.delivery.connect_timeout,
        command_timeout: ctx.config.delivery.command_timeout,
        data_timeout: ctx.config.delivery.data_timeout,
        tls: ctx.tls.clone(),
    };
    let mut last_error = String::from("no destination could be reached");
    for dest in &destinations {
        let _permit = ctx.limiter.acquire(&dest.host).await;
        // An idle connection to this host first; if it fails before any answer (the server
        // dropped it meanwhile), a new one to each of the host's addresses.
        let mut cached = ctx.connections.take(&dest.host).await;
        let mut addrs = dest.addrs.iter();
        loop {
            // Routing and the wait for a slot take time: check again right before connecting.
            if !deadline.is_valid() {
                for (_, list) in &groups {
                    results.extend(all(
                        list,
                        Outcome::Temporary,
                        DEADLINE_PASSED_BEFORE_CONNECT,
                        "4.3.0",
                    ));
                }
                return results;
            }
            let reused = cached.is_some();
            let mut conn = match cached.take() {
                Some(conn) => conn,
                None => {
                    let Some(addr) = addrs.next() else { break };
                    match outbound::Connection::open(
                        &params,
                        *addr,
                        &dest.host,
                        client_config(&ctx.config),
                    )
                    .await
                    {
                        Ok(conn) => conn,
                        Err(error) => {
                            tracing::info!(host = %dest.host, %addr, %error, "cannot deliver via this host; trying the next");
                            last_error = format!("{} [{addr}]: {error}", dest.host);
                            continue;
                        }
                    }
                }
            };
            events::emit(DeliveryConnectionUsed { reused });
            let transactions: Vec<Transaction> = groups.iter().map(|(t, _)| t.clone()).collect();
            let mut recorder = EarlyRecorder {
                groups: &groups,
                host: &dest.host,
                record,
                recorded: Default::default(),
            };
            match conn.send(transactions, deadline, &mut recorder).await {
                Err(error) => {
                    let addr = conn.addr();
                    tracing::info!(host = %dest.host, %addr, reused, %error, "cannot deliver via this connection; trying the next");
                    last_error = format!("{} [{addr}]: {error}", dest.host);
                    conn.close().await;
                }
                Ok(per_transaction) => {
                    ctx.connections.put(conn);
                    let recorded = recorder.recorded;
                    for ((_, list), rcpt_results) in groups.iter().zip(per_transaction) {
                        results.extend(
                            entry_results(list, &rcpt_results, &dest.host)
                                .into_iter()
                                .filter(|r| !recorded.contains(&r.entry.id)),
                        );
                    }
                    return results;
                }
            }
        }
    }
    for (_, list) in &groups {
        results.extend(all(list, Outcome::Temporary, &last_error, "4.4.1"));
    }
    results
}

/// Builds the bounce for `failed` recipients of `entry`'s message, stores its body, and
/// returns it ready to commit with the failure. `Ok(None)` when no bounce is due: the null
/// sender (never bounce a bounce) or a hosted sender address that does not exist.
pub async fn bounce(
    ctx: &DeliveryContext,
    entry: &QueueEntry,
    failed: &[FailedRecipient],
) -> Result<Option<AcceptedMessage>, BounceError> {
    if entry.sender.is_empty() {
        return Ok(None);
    }
    let original = match ctx.stores.blobs.get(&entry.blob_key).await {
        Ok(original) => original,
        // Gone for good: the notice goes out without the original's headers.
        Err(crate::store::BlobError::NotFound(_)) => Vec::new(),
        Err(error) => return Err(BounceError::Original(error)),
    };
    let id = new_id();
    let hostname = &ctx.config.server.hostname;
    let data = dsn::build(&dsn::Report {
        reporting_mta: hostname,
        original_sender: &entry.sender,
        original_id: &entry.message_id,
        arrival: entry.received_at,
        dsn_id: &id,
        original: &original,
        recipients: failed,
    });
    let (local, remote) = match ctx.stores.accounts.lookup_recipient(&entry.sender).await {
        Ok(RecipientLookup::Local { user_id, .. }) => (vec![LocalDelivery::inbox(user_id)], vec![]),
        Ok(RecipientLookup::NotHosted) => {
            let domain = entry
                .sender
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            (
                vec![],
                vec![RemoteRecipient {
                    recipient: entry.sender.clone(),
                    partition: partition_of(&domain, ctx.config.queue.partitions),
                    domain,
                }],
            )
        }
        Ok(RecipientLookup::UnknownUser) => {
            tracing::warn!(sender = %entry.sender, "no bounce: the sender's hosted address does not exist");
            return Ok(None);
        }
        Err(error) => return Err(BounceError::Sender(error)),
    };
    let key = ctx.stores.blobs.key_for(&data);
    let size = data.len() as i64;
    let summary = crate::message::summarize(&data);
    let inline_body = ctx
        .stores
        .stage_body(&key, data)
        .await
        .map_err(BounceError::Store)?;
    let now = now_millis();
    Ok(Some(AcceptedMessage {
        id,
        blob_key: key,
        inline_body,
        size,
        received_at: now,
        envelope_from: String::new(),
        summary,
        deliveries: local,
        remote_recipients: remote,
        expires_at: now + ctx.config.delivery.max_queue_lifetime.as_millis() as i64,
    }))
}

/// Wakes the partitions that received bounces.
pub fn hint_bounces(ctx: &DeliveryContext, bounces: &[AcceptedMessage]) {
    for b in bounces {
        for r in &b.remote_recipients {
            ctx.queue.hint(r.partition);
        }
    }
}
