//! The acceptance path shared by SMTP and the send API: DKIM-sign outbound mail, write the
//! body durably (a small one in the same commit as its metadata), commit its metadata (mailbox
//! entries and queue rows) through the storage writer's group commit, then hint the queue.
//! Parsing, hashing and sealing the body run on the blocking pool, never on the threads that
//! drive the sessions. When [`Acceptor::accept`] returns `Ok`, the
//! message is durable and may be acknowledged.

use std::sync::Arc;
use std::time::Instant;

use crate::actors::WriterHandle;
use crate::config::Config;
use crate::delivery::QueueHandle;
use crate::events::{self, BlobWritten};
use crate::store::{
    AcceptedMessage, BlobError, LocalDelivery, RemoteRecipient, Stores, now_millis, partition_of,
};

/// Why a message was not accepted. Every case but [`AcceptError::Unsendable`] is temporary
/// for the client.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The body could not be written.
    #[error("cannot store message body: {0}")]
    Blob(#[from] BlobError),
    /// The metadata could not be committed.
    #[error("{0}")]
    Commit(#[from] crate::actors::CommitError),
    /// The task parsing, hashing or sealing the body panicked or was cancelled (a bug).
    #[error("message processing failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// The message cannot be sent to remote recipients in any conforming form (permanent).
    #[error("message cannot be relayed: {0}")]
    Unsendable(#[from] crate::message::wire::WireError),
}

/// A message ready to be made durable.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Acceptance id.
    pub id: String,
    /// Envelope sender (empty for the null sender).
    pub envelope_from: String,
    /// The local copies, each to a user's folder with its flags.
    pub deliveries: Vec<LocalDelivery>,
    /// Remote recipients.
    pub remote_recipients: Vec<String>,
    /// The full message as it will be stored (trace headers included).
    pub data: Vec<u8>,
    /// DKIM-sign outbound copies for this sender: only when the `From:` domain is this
    /// address's domain (the submitter checked that the sender may use it). `None`: unsigned.
    pub sign_for: Option<String>,
}

/// Makes messages durable. Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<Config>,
    stores: Stores,
    writer: WriterHandle,
    queue: QueueHandle,
}

impl Acceptor {
    /// An acceptor writing through `writer` and hinting `queue`.
    pub fn new(
        config: Arc<Config>,
        stores: Stores,
        writer: WriterHandle,
        queue: QueueHandle,
    ) -> Self {
        Self {
            config,
            stores,
            writer,
            queue,
        }
    }

    /// The stores.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The queue partition of a domain.
    pub fn partition_of(&self, domain: &str) -> u32 {
        partition_of(domain, self.config.queue.partitions)
    }

    /// Stores `incoming` durably. Returns the stored size.
    pub async fn accept(&self, incoming: Incoming) -> Result<usize, AcceptError> {
        let Incoming {
            id,
            envelope_from,
            deliveries,
            remote_recipients,
            mut data,
            sign_for,
        } = incoming;
        if !remote_recipients.is_empty() {
            // Mail that leaves gets its wire form (CRLF only, no line over 998 octets) before
            // it is signed and stored, so the signature covers exactly what is sent.
            data = body_work(data.len(), move || {
                crate::message::wire::outbound_form(data)
            })
            .await??;
            if let Some(sender) = sign_for {
                data = self.dkim_sign(data, &sender).await;
            }
        }
        let size = data.len();
        let stores = self.stores.clone();
        let (summary, key, body) = body_work(size, move || {
            let summary = crate::message::summarize(&data);
            let key = stores.blobs.key_for(&data);
            (summary, key, stores.inline_form(data))
        })
        .await?;
        // A large body is written now and kept for a second write should its commit find it
        // deleted meanwhile.
        let (inline_body, large) = match body {
            Ok(inline) => (Some(inline), None),
            Err(data) => {
                let started = Instant::now();
                self.stores.blobs.put(&key, &data).await?;
                events::emit(BlobWritten {
                    elapsed: started.elapsed(),
                });
                (None, Some(data))
            }
        };

        let remote: Vec<RemoteRecipient> = remote_recipients
            .into_iter()
            .map(|recipient| {
                let domain = recipient
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_default();
                RemoteRecipient {
                    partition: self.partition_of(&domain),
                    domain,
                    recipient,
                }
            })
            .collect();
        let mut partitions: Vec<u32> = remote.iter().map(|r| r.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let received_at = now_millis();
        let lifetime =
            i64::try_from(self.config.delivery.max_queue_lifetime.as_millis()).unwrap_or(i64::MAX);
        let message = AcceptedMessage {
            id,
            blob_key: key,
            inline_body,
            size: size as i64,
            received_at,
            envelope_from,
            summary,
            deliveries,
            remote_recipients: remote,
            expires_at: received_at.saturating_add(lifetime),
        };
        match (self.writer.commit(message.clone()).await, large) {
            // The same body was stored before and deleted as unreferenced after our put
            // found it present: store it again (the delete is over) and commit once more.
            // (Inline bodies are written by the commit itself and never miss.)
            (Err(crate::actors::CommitError::BodyMissing(key)), Some(data)) => {
                tracing::info!(%key, "message body deleted as unreferenced meanwhile; storing it again");
                self.stores.blobs.put(&key, &data).await?;
                self.writer.commit(message).await?;
            }
            (other, _) => other?,
        }
        for partition in partitions {
            self.queue.hint(partition);
        }
        Ok(size)
    }

    /// Prepends a DKIM signature when the From domain is the sender's and has a key; mail
    /// goes out unsigned (and a warning is logged) if signing fails, rather than not at all.
    async fn dkim_sign(&self, data: Vec<u8>, sender: &str) -> Vec<u8> {
        // Every entry point refuses such mail first; a signature must never cover fields that
        // readers could see differently from the checks that ran.
        if let Err(problem) = crate::message::check_header_section(&data) {
            tracing::error!(sender, %problem, "malformed header section; sending unsigned");
            return data;
        }
        let Some(domain) = crate::message::from_domain(&data) else {
            return data;
        };
        if !may_sign(&domain, sender) {
            // Never lend a domain's signature to a message its sender may not send as.
            tracing::warn!(%domain, sender, "From domain is not the sender's; sending unsigned");
            return data;
        }
        let keys = match self.stores.dkim.signing_keys(&domain).await {
            Ok(keys) if !keys.is_empty() => keys,
            Ok(_) => return data,
            Err(error) => {
                tracing::warn!(%domain, %error, "cannot load DKIM keys; sending unsigned");
                return data;
            }
        };
        let data = Arc::new(data);
        let to_sign = data.clone();
        let cipher = self.stores.cipher.clone();
        // One signature per key (RSA and Ed25519 side by side, RFC 8463), each over the
        // message without the others; a key that fails is left out, not the message.
        let headers = tokio::task::spawn_blocking(move || {
            keys.iter()
                .map(|key| {
                    (
                        key.selector.clone(),
                        crate::dkim::sign(key, &to_sign, cipher.as_ref()),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
        let data = Arc::try_unwrap(data).unwrap_or_else(|shared| (*shared).clone());
        let headers = match headers {
            Ok(headers) => headers,
            Err(error) => {
                tracing::error!(%domain, %error, "DKIM signing task failed; sending unsigned");
                return data;
            }
        };
        let mut out = Vec::with_capacity(data.len() + 1024);
        for (selector, header) in headers {
            match header {
                Ok(header) => out.extend_from_slice(header.as_bytes()),
                Err(error) => {
                    tracing::warn!(%domain, %selector, %error, "DKIM signing failed; this signature is left out");
                }
            }
        }
        out.extend_from_slice(&data);
        out
    }
}

/// Bodies up to this size are parsed, hashed and sealed in place: at most tens of
/// microseconds, less than the two thread switches a trip to the blocking pool costs.
const IN_PLACE_MAX_BYTES: usize = 16 * 1024;

/// Runs CPU-bound work over a body of `size` bytes: in place when it is small, otherwise on
/// the blocking pool, so that a large body never stalls the sessions sharing this thread.
async fn body_work<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AcceptError> {
    if size <= IN_PLACE_MAX_BYTES {
        return Ok(work());
    }
    Ok(tokio::task::spawn_blocking(work).await?)
}

/// Whether mail from `sender` may be signed with the key of `from_domain`: only when it is
/// the sender's own domain.
fn may_sign(from_domain: &str, sender: &str) -> bool {
    sender
        .rsplit_once('@')
        .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(from_domain))
}

#[cfg(test)]
mod tests {
    use super::may_sign;

    #[test]
    fn only_the_senders_own_domain_signs() {
        assert!(may_sign("example.test", "alice@example.test"));
        assert!(may_sign("example.test", "Alice@Example.TEST"));
        assert!(!may_sign("other.test", "alice@example.test"));
        assert!(!may_sign("example.test", "alice@sub.example.test"));
        assert!(!may_sign("example.test", "no-domain"));
    }
}
