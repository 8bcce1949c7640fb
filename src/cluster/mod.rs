//! The cluster: membership and requests between MaiRust nodes over QUIC.
//!
//! Everything outside this module sees a small handle ([`Cluster`]): start it, read the live
//! members, watch membership change, send a [`Request`] to a member. quinn (the transport,
//! mutual TLS) and foca (SWIM failure detection over QUIC datagrams) stay inside. Membership is
//! liveness only: who owns a partition is decided by the fenced lease in the database, and
//! [`assignment`] only says who *should*.

pub mod admission;
pub mod assignment;
pub mod envelope;
pub mod identity;
pub mod membership;
pub mod seeds;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{ClusterConfig, Role};
use admission::{Admission, AdmissionTracker};
use identity::{Input, NodeIdentity};
use transport::{RequestFrame, Service, Transport, TransportError};

/// What this node knows of a member's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; declared down unless it answers soon.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl MemberState {
    /// The name in the API and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// A member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id (`cluster.node_id`), also the owner name on its partition leases.
    pub node_id: String,
    /// Its advertised cluster address.
    pub addr: SocketAddr,
    /// The roles it runs; only `queue` members own partitions.
    pub roles: Vec<Role>,
    /// Liveness.
    pub state: MemberState,
}

impl Member {
    /// Whether it should own partitions now: runs the queue role and is not down. A suspect
    /// member keeps its partitions, so a missed probe or two moves nothing; its leases protect
    /// the mail if it really is gone.
    pub fn owns_partitions(&self) -> bool {
        self.state != MemberState::Down && self.roles.contains(&Role::Queue)
    }
}

/// A request one node sends another over a QUIC stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// New work is due in these partitions (sent to their owner by the accepting node).
    Hint {
        /// The partitions.
        partitions: Vec<u32>,
    },
    /// Make a queue row due now (sent to its partition's owner).
    Retry {
        /// The row's partition.
        partition: u32,
        /// The row.
        id: i64,
    },
    /// Cancel a queue row, bouncing it if asked (sent to its partition's owner).
    Cancel {
        /// The row's partition.
        partition: u32,
        /// The row.
        id: i64,
        /// Whether the sender gets a bounce.
        bounce: bool,
    },
    /// The sender is the partition's desired owner and asks the holder of its lease to hand
    /// it over (drain, then release).
    Handover {
        /// The partition.
        partition: u32,
    },
    /// The sender is leaving and has released this partition's lease: the receiver, its owner
    /// once the sender is gone, should take it now.
    Offer {
        /// The partition.
        partition: u32,
    },
}

/// Why a request was refused, in a form both ends agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The thing asked about does not exist.
    NotFound,
    /// It exists but is in a state that forbids the change.
    Conflict,
    /// The receiver does not own the partition.
    NotOwned,
    /// The receiver cannot serve it now.
    Unavailable,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Ok,
    /// Refused, with a message for people.
    Error {
        /// The kind.
        kind: ErrorKind,
        /// What went wrong.
        message: String,
    },
}

/// Serves the requests other nodes send to this one.
#[async_trait::async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers `request` from node `from`.
    async fn handle(&self, from: &str, request: Request) -> Response;
}

/// How long [`Cluster::request`] waits for an answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cluster could not start, or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A configuration value is unusable.
    #[error("{key} = {value:?} is not usable: {message}")]
    Config {
        /// The key to fix.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why, and what to do.
        message: String,
    },
    /// The UDP socket could not be bound.
    #[error(
        "cannot bind the cluster endpoint to cluster.bind {addr}: {source}; use a free UDP port and an address of this host"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS credentials could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// quinn refused the TLS configuration.
    #[error("the cluster TLS configuration cannot be used for QUIC: {0}; check cluster.tls")]
    Quic(String),
    /// No member has this node id.
    #[error("no cluster member is called {0:?}; see GET /api/v1/cluster for the members")]
    UnknownMember(String),
    /// The member could not be reached.
    #[error("cluster member {node_id} cannot be reached: {reason}; try again when it is up")]
    Unreachable {
        /// The member.
        node_id: String,
        /// Why.
        reason: String,
    },
    /// The member did not answer in time.
    #[error("cluster member {node_id} did not answer within {after:?}; try again")]
    Timeout {
        /// The member.
        node_id: String,
        /// The timeout.
        after: Duration,
    },
    /// The member answered something this node cannot read.
    #[error(
        "cluster member {node_id} answered something this node cannot read: {reason}; run the same MaiRust version on every node"
    )]
    Protocol {
        /// The member.
        node_id: String,
        /// Why.
        reason: String,
    },
    /// This node has left the cluster.
    #[error("this node has left the cluster")]
    Stopped,
}

/// A handle on this node's cluster membership and transport; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    admission: AdmissionTracker,
    transport: Arc<Transport>,
    view: watch::Receiver<Vec<Member>>,
    membership: mpsc::Sender<Input>,
    handler: Arc<dyn RequestHandler>,
    up: AtomicBool,
    accept: JoinHandle<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop everything, as a crash would (no goodbye).
        self.accept.abort();
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.transport
            .endpoint()
            .close(quinn::VarInt::from_u32(0), b"stopped");
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Binds the QUIC endpoint on `cluster.bind`, starts membership and the seed loop, and
    /// returns at once (joining happens in the background).
    ///
    /// The advertised address is `cluster.advertise`; without it, the bound address; and when
    /// that is a wildcard (`0.0.0.0`, `::`), the first address of the host name that is not
    /// loopback (the pod or container address in Kubernetes and Docker, where the host name
    /// resolves to it), or an error asking for `cluster.advertise`.
    pub async fn start(
        config: &ClusterConfig,
        node_id: String,
        roles: Vec<Role>,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<Cluster, ClusterError> {
        crate::net::tls::install_crypto_provider();
        if node_id.trim().is_empty() {
            return Err(ClusterError::Config {
                key: "cluster.node_id",
                value: node_id,
                message: "it must not be empty; set it or give the host a name".into(),
            });
        }
        let credentials = tls::credentials(config.secret.as_deref(), config.tls.as_ref())?;
        let (server, client) =
            transport::endpoint_configs(&credentials).map_err(ClusterError::Quic)?;
        let bind = resolve_one("cluster.bind", &config.bind).await?;
        let mut endpoint = quinn::Endpoint::server(server, bind)
            .map_err(|source| ClusterError::Bind { addr: bind, source })?;
        endpoint.set_default_client_config(client);
        let local = endpoint
            .local_addr()
            .map_err(|source| ClusterError::Bind { addr: bind, source })?;
        let advertise = advertise_addr(config.advertise.as_deref(), local).await?;

        let me = NodeIdentity::new(node_id.clone(), advertise, &roles);
        let (inputs, rx) = mpsc::channel(1024);
        let admission = AdmissionTracker::new();
        let transport = Transport::new(endpoint.clone(), inputs.clone(), admission.clone());
        let (view_tx, view) = watch::channel(membership::view(&me, []));
        let accept = tokio::spawn(transport::accept_loop(
            endpoint,
            Service {
                membership: inputs.clone(),
                handler: handler.clone(),
                admission: admission.clone(),
            },
        ));
        let tasks = vec![
            tokio::spawn(membership::run(
                me,
                transport.clone(),
                view_tx,
                inputs.clone(),
                rx,
            )),
            tokio::spawn(seeds::run(
                config.seeds.clone(),
                config.seed_dns.clone(),
                node_id.clone(),
                view.clone(),
                inputs.clone(),
            )),
        ];
        tracing::info!(node_id, bind = %local, %advertise, "cluster endpoint up");
        Ok(Cluster {
            inner: Arc::new(Inner {
                node_id,
                admission,
                transport,
                view,
                membership: inputs,
                handler,
                up: AtomicBool::new(true),
                accept,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// This node's advertised address.
    pub fn addr(&self) -> SocketAddr {
        self.members()
            .into_iter()
            .find(|m| m.node_id == self.inner.node_id)
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |member| member.addr)
    }

    /// This node (alive) and every member it knows, alive, suspect or down (down ones are
    /// forgotten after [`membership::FORGET_DOWN_AFTER`]), sorted by node id.
    pub fn members(&self) -> Vec<Member> {
        self.inner.view.borrow().clone()
    }

    /// The same view as [`Cluster::members`], updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.view.clone()
    }

    /// Sends `request` to member `node_id` and waits (at most [`REQUEST_TIMEOUT`]) for its
    /// answer. A request to this node itself goes straight to its handler.
    pub async fn request(&self, node_id: &str, request: Request) -> Result<Response, ClusterError> {
        if node_id == self.inner.node_id {
            return Ok(self.inner.handler.handle(node_id, request).await);
        }
        if !self.is_up() {
            return Err(ClusterError::Stopped);
        }
        let member = self
            .members()
            .into_iter()
            .find(|m| m.node_id == node_id)
            .ok_or_else(|| ClusterError::UnknownMember(node_id.to_string()))?;
        if member.state == MemberState::Down {
            return Err(ClusterError::Unreachable {
                node_id: node_id.to_string(),
                reason: "it is down".into(),
            });
        }
        let frame = RequestFrame {
            from: self.inner.node_id.clone(),
            request,
        };
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.inner.transport.request(member.addr, &frame),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(TransportError::Closed)) => Err(ClusterError::Stopped),
            Ok(Err(TransportError::Connection(reason))) => Err(ClusterError::Unreachable {
                node_id: node_id.to_string(),
                reason,
            }),
            Ok(Err(TransportError::Protocol(error))) => Err(ClusterError::Protocol {
                node_id: node_id.to_string(),
                reason: error.to_string(),
            }),
            Err(_) => Err(ClusterError::Timeout {
                node_id: node_id.to_string(),
                after: REQUEST_TIMEOUT,
            }),
        }
    }

    /// Whether this node is in its cluster (see [`admission`]), and every change.
    pub fn admission(&self) -> watch::Receiver<Admission> {
        self.inner.admission.subscribe()
    }

    /// The join wait passed and no peer answered: this node is the first one.
    pub fn no_peer_answered(&self) {
        self.inner.admission.alone();
    }

    /// Why this node is not in its cluster, if it is refused (for `/health/ready`).
    pub fn refusal(&self) -> Option<String> {
        match self.inner.admission.current() {
            Admission::Refused(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the endpoint is running (for `/health/ready`).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed) && !self.inner.accept.is_finished()
    }

    /// Tells peers this node leaves (so they see it down at once), then closes the endpoint.
    pub async fn leave(&self) {
        let (done, left) = oneshot::channel();
        if self.inner.membership.send(Input::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), left).await;
            // The goodbye datagrams are queued; give the endpoint a moment to send them.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.up.store(false, Ordering::Relaxed);
        for task in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            task.abort();
        }
        let endpoint = self.inner.transport.endpoint();
        endpoint.close(quinn::VarInt::from_u32(0), b"leaving");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        tracing::info!(node_id = %self.inner.node_id, "left the cluster");
    }
}

/// Resolves `value` (an `ip:port` or `host:port`) to its first address.
async fn resolve_one(key: &'static str, value: &str) -> Result<SocketAddr, ClusterError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let error = |message: String| ClusterError::Config {
        key,
        value: value.to_string(),
        message,
    };
    match tokio::net::lookup_host(value).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| {
            error("it resolves to no address; give an ip:port or a name that resolves".into())
        }),
        Err(e) => Err(error(format!(
            "{e}; give an ip:port or a host:port that resolves"
        ))),
    }
}

/// The address peers reach this node at (see [`Cluster::start`]).
async fn advertise_addr(
    advertise: Option<&str>,
    local: SocketAddr,
) -> Result<SocketAddr, ClusterError> {
    if let Some(value) = advertise.filter(|a| !a.trim().is_empty()) {
        let mut addr = resolve_one("cluster.advertise", value).await?;
        if addr.ip().is_unspecified() {
            return Err(ClusterError::Config {
                key: "cluster.advertise",
                value: value.to_string(),
                message: "peers cannot reach a wildcard address; give this node's address".into(),
            });
        }
        if addr.port() == 0 {
            addr.set_port(local.port());
        }
        return Ok(addr);
    }
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let candidates: Vec<IpAddr> = if host.is_empty() {
        Vec::new()
    } else {
        tokio::net::lookup_host((host.as_str(), local.port()))
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default()
    };
    pick_advertise(local, &candidates).ok_or_else(|| ClusterError::Config {
        key: "cluster.advertise",
        value: String::new(),
        message: format!(
            "cluster.bind is the wildcard {local} and the host name {host:?} resolves to no address other than loopback; set cluster.advertise to the ip:port peers reach this node at"
        ),
    })
}

/// The first of `candidates` (the host name's addresses) peers could reach, on the bound port:
/// not loopback, not a wildcard, and of the bound family when bound to `0.0.0.0`.
fn pick_advertise(local: SocketAddr, candidates: &[IpAddr]) -> Option<SocketAddr> {
    candidates
        .iter()
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified() && (local.is_ipv6() || ip.is_ipv4()))
        .map(|ip| SocketAddr::new(*ip, local.port()))
}
