//! One outbound SMTP connection: the driver that owns the socket, the timers and the TLS
//! upgrade around the sans-I/O [`ClientSession`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{
    ClientConfig, ClientEvent, ClientSession, Outcome, RecipientResult, Transaction,
};
use crate::actors::lease_deadline::LeaseDeadline;

/// Why a transaction was given up at the end-of-data gate.
pub const DEADLINE_PASSED: &str =
    "lease deadline passed before the end of data; the next owner retries";

/// What one connection needs from the delivery configuration (and nothing else of it).
#[derive(Clone)]
pub struct ConnectionParams {
    /// Longest wait for the TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for a reply to a command (and for the TLS handshake).
    pub command_timeout: Duration,
    /// Longest wait for the reply after the message data.
    pub data_timeout: Duration,
    /// TLS for STARTTLS.
    pub tls: Arc<rustls::ClientConfig>,
}

/// The connection, plain or after STARTTLS.
type Stream = super::stream::Stream<tokio_rustls::client::TlsStream<TcpStream>>;

fn server_name(host: &str, addr: SocketAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

/// Sends `transactions` over one connection to `addr`. Returns each transaction's recipient
/// results in order, or `Err` when the host failed before answering any recipient (connect
/// error, refused greeting, TLS failure): then the caller tries the next host.
///
/// Before each end of data the partition's lease `deadline` is checked: past it the
/// connection is dropped without the terminator (the server discards the message) and that
/// transaction and the later ones are temporary failures ([`DEADLINE_PASSED`]), reported as
/// `Ok` so that no other host is tried either.
pub async fn send(
    params: &ConnectionParams,
    addr: SocketAddr,
    host: &str,
    config: ClientConfig,
    transactions: Vec<Transaction>,
    deadline: &LeaseDeadline,
) -> Result<Vec<Vec<RecipientResult>>, String> {
    let tcp = tokio::time::timeout(params.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| format!("connection failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let count = transactions.len();
    let mut session = ClientSession::new(config);
    for tx in transactions {
        session.push(tx);
    }
    session.finish();

    let mut stream = Stream::Plain(tcp);
    let mut results: Vec<Vec<RecipientResult>> = vec![Vec::new(); count];
    let mut failure: Option<String> = None;
    let mut fenced = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::StartTls => {
                    flush(&mut session, &mut stream).await;
                    match upgrade(params, host, addr, &mut stream).await {
                        Ok(()) => session.tls_started(),
                        Err(e) => {
                            failure = Some(format!("TLS handshake failed: {e}"));
                            session.handle_disconnect();
                        }
                    }
                }
                ClientEvent::ReadyToCommit { index } => {
                    // The data first: it may take long to send, and the check must come
                    // after it, right before the only bytes that make the server keep it.
                    if !flush(&mut session, &mut stream).await {
                        session.handle_disconnect();
                    } else if deadline.is_valid() {
                        session.commit();
                    } else {
                        tracing::warn!(%host, %addr, transaction = index, "lease deadline passed before the end of data; dropping the connection");
                        session.abort_commit(DEADLINE_PASSED);
                        fenced = true;
                    }
                }
                ClientEvent::TransactionDone { index, results: r } => {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = r;
                    }
                }
                ClientEvent::SessionFailed { reply, reason } => {
                    failure = Some(match reply {
                        Some(reply) => format!("{reason}: {}", reply.summary()),
                        None => reason,
                    });
                }
            }
        }
        if !flush(&mut session, &mut stream).await {
            session.handle_disconnect();
            continue;
        }
        if session.is_done() {
            break;
        }
        let timeout = if session.expects_data_reply() {
            params.data_timeout
        } else {
            params.command_timeout
        };
        match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
            Err(_) => session.handle_timeout(),
            Ok(Ok(0)) | Ok(Err(_)) => session.handle_disconnect(),
            Ok(Ok(n)) => session.handle_input(&buf[..n]),
        }
    }
    if fenced {
        // Dropped, not shut down: nothing more may reach the server, not even a TLS
        // close_notify, and the results stand as they are.
        drop(stream);
        return Ok(results);
    }
    let _ = stream.shutdown().await;
    // After a session failure, only a definitive answer (delivered or refused) counts as the
    // host having dealt with the mail; otherwise the next host gets a chance.
    let answered = results
        .iter()
        .flatten()
        .any(|r| r.outcome != Outcome::Temporary);
    match failure {
        Some(reason) if !answered => Err(reason),
        _ => Ok(results),
    }
}

/// Writes everything the session has queued; false if the connection broke.
async fn flush(session: &mut ClientSession, stream: &mut Stream) -> bool {
    let mut wrote = false;
    while let Some(out) = session.poll_output() {
        if stream.write_all(&out).await.is_err() {
            return false;
        }
        wrote = true;
    }
    !wrote || stream.flush().await.is_ok()
}

async fn upgrade(
    params: &ConnectionParams,
    host: &str,
    addr: SocketAddr,
    stream: &mut Stream,
) -> Result<(), String> {
    let Some(tcp) = stream.take_plain() else {
        return Err("STARTTLS on a connection that is not plain TCP".into());
    };
    let connector = tokio_rustls::TlsConnector::from(params.tls.clone());
    let tls = tokio::time::timeout(
        params.command_timeout,
        connector.connect(server_name(host, addr), tcp),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    *stream = Stream::Tls(Box::new(tls));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::smtp::client::TlsPolicy;

    /// A minimal pipelining receiver on loopback: answers every command, stores what ends
    /// with `.`; returns the stored messages and whether a message was cut off mid-data.
    async fn receiver(listener: TcpListener) -> (Vec<String>, bool) {
        let (socket, _) = listener.accept().await.expect("accept");
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 mx ESMTP\r\n").await.expect("greet");
        let mut stored = Vec::new();
        let mut data: Option<String> = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(body) = data.as_mut() {
                if line == "." {
                    stored.push(std::mem::take(body));
                    data = None;
                    write.write_all(b"250 2.0.0 queued\r\n").await.expect("w");
                } else {
                    body.push_str(&line);
                    body.push('\n');
                }
                continue;
            }
            let reply: &[u8] = match line.get(..4).unwrap_or_default() {
                "EHLO" => b"250-mx\r\n250 PIPELINING\r\n",
                "DATA" => {
                    data = Some(String::new());
                    b"354 go\r\n"
                }
                "QUIT" => {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    break;
                }
                _ => b"250 ok\r\n",
            };
            write.write_all(reply).await.expect("w");
        }
        (stored, data.is_some())
    }

    async fn send_one(deadline: &LeaseDeadline) -> (Vec<Vec<RecipientResult>>, Vec<String>, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(receiver(listener));
        let params = ConnectionParams {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            tls: crate::tls::outbound_client_config(),
        };
        let config = ClientConfig {
            helo_name: "out.test".into(),
            tls: TlsPolicy::Disabled,
            tls_available: false,
            auth: None,
            allow_plain_auth: false,
        };
        let tx = |rcpt: &str| Transaction {
            mail_from: "a@here.test".into(),
            rcpt_to: vec![rcpt.into()],
            body: Arc::from(&b"Subject: s\r\n\r\nbody\r\n"[..]),
            smtputf8: false,
            body_8bit: false,
        };
        let results = send(
            &params,
            addr,
            "mx.test",
            config,
            vec![tx("x@r.test"), tx("y@r.test")],
            deadline,
        )
        .await
        .expect("answered");
        let (stored, cut) = server.await.expect("receiver");
        (results, stored, cut)
    }

    #[tokio::test]
    async fn within_the_deadline_the_mail_is_sent() {
        let deadline = LeaseDeadline::default();
        deadline.renewed(tokio::time::Instant::now(), Duration::from_secs(60));
        let (results, stored, cut) = send_one(&deadline).await;
        assert_eq!(stored.len(), 2);
        assert!(!cut);
        assert!(
            results
                .iter()
                .flatten()
                .all(|r| r.outcome == Outcome::Delivered)
        );
    }

    #[tokio::test]
    async fn past_the_deadline_the_end_of_data_never_leaves() {
        let deadline = LeaseDeadline::default();
        let (results, stored, cut) = send_one(&deadline).await;
        assert!(stored.is_empty(), "the receiver kept {stored:?}");
        assert!(cut, "the connection was dropped mid-data");
        assert_eq!(results.len(), 2);
        for r in results.iter().flatten() {
            assert_eq!(r.outcome, Outcome::Temporary);
            assert!(r.reply.text.contains(DEADLINE_PASSED), "{r:?}");
        }
    }
}
