//! The QUIC transport: one endpoint (client and server on one UDP socket), one outgoing
//! connection per peer, datagrams for foca, one bidirectional stream per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, ConnectionError, Endpoint, TransportErrorCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::admission::AdmissionTracker;
use super::envelope::{self, EnvelopeError, MAX_MESSAGE_BYTES};
use super::identity::Input;
use super::tls::{Credentials, SERVER_NAME};
use super::{Request, RequestHandler, Response};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an incoming request may take to arrive and be answered.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Datagrams queued for one peer while its connection is being made; more are dropped
/// (foca retries on its own).
const PEER_QUEUE: usize = 64;

/// A request as it travels: who sends it, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// The sender's node id.
    pub from: String,
    /// The request.
    pub request: Request,
}

/// Why a connection or a stream to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint is closed (the node left).
    #[error("the cluster endpoint is closed")]
    Closed,
    /// The connection could not be made or was lost.
    #[error("{0}")]
    Connection(String),
    /// The peer answered something this node cannot read.
    #[error("{0}")]
    Protocol(#[from] EnvelopeError),
}

enum PeerCommand {
    Datagram(Bytes),
    Connection(oneshot::Sender<Result<Connection, TransportError>>),
}

/// The endpoint and its per-peer connections.
pub struct Transport {
    endpoint: Endpoint,
    membership: mpsc::Sender<Input>,
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<PeerCommand>>>,
    admission: AdmissionTracker,
}

/// The quinn endpoint configurations for `credentials`.
pub fn endpoint_configs(
    credentials: &Credentials,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), String> {
    let mut transport = quinn::TransportConfig::default();
    // Keep-alives keep idle connections (and their NAT/conntrack entries) open; the idle
    // timeout drops connections to peers that vanished.
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    let transport = Arc::new(transport);
    let server_crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(credentials.server.clone())
            .map_err(|error| error.to_string())?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(credentials.client.clone())
            .map_err(|error| error.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

/// Whether `error` is the TLS handshake failing (a peer with other credentials), as opposed
/// to the peer being unreachable.
pub fn is_handshake_refusal(error: &ConnectionError) -> bool {
    let crypto = |code: TransportErrorCode| (u64::from(code) & !0xff) == 0x100;
    match error {
        ConnectionError::TransportError(error) => crypto(error.code),
        ConnectionError::ConnectionClosed(close) => crypto(close.error_code),
        _ => false,
    }
}

impl Transport {
    /// Wraps a bound endpoint; handshake outcomes go to `admission`.
    pub fn new(
        endpoint: Endpoint,
        membership: mpsc::Sender<Input>,
        admission: AdmissionTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            membership,
            peers: Mutex::new(HashMap::new()),
            admission,
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends a datagram to `to`, connecting first if needed; dropped if that fails (foca
    /// treats lost datagrams as lost probes).
    pub fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        if self.peer(to).try_send(PeerCommand::Datagram(data)).is_err() {
            tracing::debug!(peer = %to, "cluster datagram dropped: peer queue full");
        }
    }

    /// The connection to `to`, made if there is none or the last one closed.
    pub async fn connection(&self, to: SocketAddr) -> Result<Connection, TransportError> {
        let (tx, rx) = oneshot::channel();
        self.peer(to)
            .send(PeerCommand::Connection(tx))
            .await
            .map_err(|_| TransportError::Closed)?;
        rx.await.map_err(|_| TransportError::Closed)?
    }

    /// Sends `request` on a new stream of the connection to `to` and reads the answer.
    pub async fn request(
        &self,
        to: SocketAddr,
        frame: &RequestFrame,
    ) -> Result<Response, TransportError> {
        let bytes = envelope::encode(frame)?;
        let connection = self.connection(to).await?;
        let lost = |error: &dyn std::fmt::Display| TransportError::Connection(error.to_string());
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
        send.write_all(&bytes).await.map_err(|e| lost(&e))?;
        send.finish().map_err(|e| lost(&e))?;
        let answer = recv
            .read_to_end(MAX_MESSAGE_BYTES)
            .await
            .map_err(|e| lost(&e))?;
        Ok(envelope::decode(&answer)?)
    }

    fn peer(&self, to: SocketAddr) -> mpsc::Sender<PeerCommand> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = peers.get(&to)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        tokio::spawn(peer_task(
            self.endpoint.clone(),
            self.membership.clone(),
            self.admission.clone(),
            to,
            rx,
        ));
        peers.insert(to, tx.clone());
        tx
    }
}

/// Owns the outgoing connection to one peer, so connection attempts to it never overlap.
async fn peer_task(
    endpoint: Endpoint,
    membership: mpsc::Sender<Input>,
    admission: AdmissionTracker,
    to: SocketAddr,
    mut rx: mpsc::Receiver<PeerCommand>,
) {
    let mut current: Option<Connection> = None;
    while let Some(command) = rx.recv().await {
        let connection = match current.as_ref().filter(|c| c.close_reason().is_none()) {
            Some(connection) => Ok(connection.clone()),
            None => connect(&endpoint, &membership, &admission, to).await,
        };
        current = connection.as_ref().ok().cloned();
        match command {
            PeerCommand::Datagram(data) => {
                if let Ok(connection) = connection {
                    send_datagram(&connection, to, data);
                }
            }
            PeerCommand::Connection(reply) => {
                let _ = reply.send(connection);
            }
        }
    }
}

fn send_datagram(connection: &Connection, to: SocketAddr, data: Bytes) {
    match connection.max_datagram_size() {
        Some(limit) if data.len() <= limit => {
            if let Err(error) = connection.send_datagram(data) {
                tracing::debug!(peer = %to, %error, "cluster datagram not sent");
            }
        }
        limit => tracing::warn!(
            peer = %to,
            size = data.len(),
            limit = ?limit,
            "cluster datagram larger than the connection allows; dropped"
        ),
    }
}

async fn connect(
    endpoint: &Endpoint,
    membership: &mpsc::Sender<Input>,
    admission: &AdmissionTracker,
    to: SocketAddr,
) -> Result<Connection, TransportError> {
    let connecting = endpoint
        .connect(to, SERVER_NAME)
        .map_err(|error| match error {
            quinn::ConnectError::EndpointStopping => TransportError::Closed,
            other => TransportError::Connection(format!("cannot connect to {to}: {other}")),
        })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(TransportError::Connection(format!(
            "no answer from {to} within {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Err(error)) => {
            if is_handshake_refusal(&error) {
                log_refusal(to, &error);
                admission.refused(format!("peer {to} refused the handshake: {error}"));
            } else {
                tracing::debug!(peer = %to, %error, "cannot connect to cluster peer");
            }
            Err(TransportError::Connection(format!(
                "cannot connect to {to}: {error}"
            )))
        }
        Ok(Ok(connection)) => {
            // The peer may still refuse this node's certificate after the handshake: then the
            // connection closes with a crypto error, which read_datagrams reports.
            tokio::spawn(read_datagrams(
                connection.clone(),
                membership.clone(),
                admission.clone(),
            ));
            Ok(connection)
        }
    }
}

/// How often a refused peer is logged at warn; the retries in between go to debug, so a
/// misconfigured node retrying every second does not flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// When each refused peer was last logged at warn.
static REFUSALS_LOGGED: Mutex<Option<HashMap<SocketAddr, std::time::Instant>>> = Mutex::new(None);

/// Whether a refusal of `peer` at `now` is due a warn line (and records it if so).
fn refusal_due(
    logged: &mut HashMap<SocketAddr, std::time::Instant>,
    peer: SocketAddr,
    now: std::time::Instant,
) -> bool {
    logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
    if logged.contains_key(&peer) {
        return false;
    }
    logged.insert(peer, now);
    true
}

fn log_refusal(peer: SocketAddr, error: &ConnectionError) {
    let due = {
        let mut logged = REFUSALS_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
        refusal_due(
            logged.get_or_insert_with(HashMap::new),
            peer,
            std::time::Instant::now(),
        )
    };
    if due {
        tracing::warn!(
            %peer,
            %error,
            "cluster handshake refused: peer is not in this cluster (different cluster.secret or CA)"
        );
    } else {
        tracing::debug!(%peer, %error, "cluster handshake refused again");
    }
}

/// What serves an incoming connection.
#[derive(Clone)]
pub struct Service {
    /// Where datagrams go.
    pub membership: mpsc::Sender<Input>,
    /// Who answers requests.
    pub handler: Arc<dyn RequestHandler>,
    /// Where handshake outcomes go.
    pub admission: AdmissionTracker,
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop(endpoint: Endpoint, service: Service) {
    while let Some(incoming) = endpoint.accept().await {
        let service = service.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) if is_handshake_refusal(&error) => {
                    log_refusal(peer, &error);
                    return;
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "incoming cluster connection failed");
                    return;
                }
            };
            // Its certificate passed this node's check: a member of the same cluster.
            service.admission.admitted();
            tokio::spawn(read_datagrams(
                connection.clone(),
                service.membership.clone(),
                service.admission.clone(),
            ));
            serve_streams(connection, service.handler).await;
        });
    }
}

/// Hands the datagrams of `connection` (incoming or outgoing) to membership. A datagram from
/// the peer shows it accepted this node; a close for a crypto error, that it did not.
async fn read_datagrams(
    connection: Connection,
    membership: mpsc::Sender<Input>,
    admission: AdmissionTracker,
) {
    let mut heard = false;
    loop {
        let datagram = match connection.read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => {
                if is_handshake_refusal(&error) {
                    let peer = connection.remote_address();
                    log_refusal(peer, &error);
                    admission.refused(format!("peer {peer} refused the handshake: {error}"));
                }
                return;
            }
        };
        if !heard {
            heard = true;
            admission.admitted();
        }
        match envelope::open(&datagram) {
            Ok(body) => {
                let body = datagram.slice(datagram.len() - body.len()..);
                if membership.try_send(Input::Data(body)).is_err() {
                    tracing::debug!("membership busy; cluster datagram dropped");
                }
            }
            Err(error) => tracing::warn!(
                peer = %connection.remote_address(),
                %error,
                "cluster datagram refused"
            ),
        }
    }
}

async fn serve_streams(connection: Connection, handler: Arc<dyn RequestHandler>) {
    let peer = connection.remote_address();
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let served = tokio::time::timeout(SERVE_TIMEOUT, async {
                let bytes = recv
                    .read_to_end(MAX_MESSAGE_BYTES)
                    .await
                    .map_err(|error| error.to_string())?;
                let frame: RequestFrame = match envelope::decode(&bytes) {
                    Ok(frame) => frame,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "cluster request refused");
                        let _ = send.reset(quinn::VarInt::from_u32(1));
                        return Ok(());
                    }
                };
                let response = handler.handle(&frame.from, frame.request).await;
                let answer = envelope::encode(&response).map_err(|error| error.to_string())?;
                send.write_all(&answer)
                    .await
                    .map_err(|error| error.to_string())?;
                send.finish().map_err(|error| error.to_string())
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "cluster request not answered"),
                Err(_) => tracing::warn!(%peer, "cluster request not answered in time"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_peer_is_warned_about_once_a_minute() {
        let mut logged = HashMap::new();
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        let t0 = std::time::Instant::now();
        assert!(refusal_due(&mut logged, a, t0));
        assert!(!refusal_due(&mut logged, a, t0 + Duration::from_secs(1)));
        assert!(refusal_due(&mut logged, b, t0 + Duration::from_secs(1)));
        assert!(refusal_due(&mut logged, a, t0 + REFUSAL_LOG_INTERVAL));
    }

    #[test]
    fn crypto_errors_are_handshake_refusals() {
        let refused = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: TransportErrorCode::crypto(42),
            frame_type: None,
            reason: bytes::Bytes::from_static(b"bad certificate"),
        });
        assert!(is_handshake_refusal(&refused));
        assert!(!is_handshake_refusal(&ConnectionError::TimedOut));
    }
}
