//! One outbound SMTP connection: the driver that owns the socket, the timers and the TLS
//! upgrade around the sans-I/O [`ClientSession`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{
    ClientConfig, ClientEvent, ClientSession, Outcome, RecipientResult, Transaction,
};
use crate::delivery::lease_deadline::LeaseDeadline;

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
type Stream = crate::net::stream::Stream<tokio_rustls::client::TlsStream<TcpStream>>;

fn server_name(host: &str, addr: SocketAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

/// An outbound SMTP connection: greeted, past STARTTLS and AUTH, and then given transactions,
/// one batch after another, until it is closed or kept idle by the connection cache.
pub struct Connection {
    session: ClientSession,
    stream: Stream,
    params: ConnectionParams,
    host: String,
    addr: SocketAddr,
    opened: Instant,
    sent: usize,
    /// Dropped mid-data at the lease deadline: nothing more may reach the server.
    fenced: bool,
}

impl Connection {
    /// Connects to `addr` (named `host`, for TLS) and runs the greeting, EHLO, STARTTLS and
    /// AUTH. `Err` when the host cannot take mail now (connect error, refused greeting, TLS
    /// failure): the caller tries the next host.
    pub async fn open(
        params: &ConnectionParams,
        addr: SocketAddr,
        host: &str,
        config: ClientConfig,
    ) -> Result<Self, String> {
        let tcp = tokio::time::timeout(params.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| "connection timed out".to_string())?
            .map_err(|e| format!("connection failed: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Self {
            session: ClientSession::new(config),
            stream: Stream::Plain(tcp),
            params: params.clone(),
            host: host.to_string(),
            addr,
            opened: Instant::now(),
            sent: 0,
            fenced: false,
        };
        // Nothing is pushed yet, so no end of data can come up: any deadline will do.
        let failure = conn
            .run(&mut [], 0, &LeaseDeadline::default(), &mut ())
            .await;
        if conn.session.is_idle() {
            return Ok(conn);
        }
        let reason =
            failure.unwrap_or_else(|| "connection lost before the server was ready".into());
        conn.close().await;
        Err(reason)
    }

    /// Sends `transactions` and returns each one's recipient results in order, or `Err` when
    /// the session failed before any recipient got a definitive answer: then the caller may
    /// try another connection or host.
    ///
    /// Each transaction's results also go to `recorder` as soon as the server answers its end
    /// of data; what the recorder starts (the commit of those results) runs while the next
    /// message is sent, and ends before that message's end of data. So a crash can repeat at
    /// most the one message whose result was being recorded.
    ///
    /// Before each end of data the partition's lease `deadline` is checked: past it the
    /// connection is dropped without the terminator (the server discards the message) and that
    /// transaction and the later ones are temporary failures ([`DEADLINE_PASSED`]), reported as
    /// `Ok` so that no other host is tried either.
    pub async fn send(
        &mut self,
        transactions: Vec<Transaction>,
        deadline: &LeaseDeadline,
        recorder: &mut dyn Recorder,
    ) -> Result<Vec<Vec<RecipientResult>>, String> {
        let base = self.session.pushed();
        let mut results: Vec<Vec<RecipientResult>> = vec![Vec::new(); transactions.len()];
        self.sent += transactions.len();
        for tx in transactions {
            self.session.push(tx);
        }
        let failure = self.run(&mut results, base, deadline, recorder).await;
        if self.fenced {
            return Ok(results);
        }
        // After a session failure, only a definitive answer (delivered or refused) counts as
        // the host having dealt with the mail; otherwise the next host gets a chance.
        let answered = results
            .iter()
            .flatten()
            .any(|r| r.outcome != Outcome::Temporary);
        match failure {
            Some(reason) if !answered => Err(reason),
            _ => Ok(results),
        }
    }

    /// The host this connection was opened to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection can take another transaction now, `sent` so far being fewer
    /// than `max_messages` and its age less than `max_age`.
    pub fn reusable(&self, max_messages: usize, max_age: Duration) -> bool {
        self.session.is_idle() && self.sent < max_messages && self.opened.elapsed() < max_age
    }

    /// Returns when the server sent something or closed the connection while nothing was
    /// asked of it: a `421` before an idle timeout, or the close itself. Either way the
    /// connection is no use any more.
    pub async fn spoke_unasked(&mut self) {
        let mut byte = [0u8; 1];
        let _ = self.stream.read(&mut byte).await;
    }

    /// Ends the connection: QUIT (if the session is still up), then the TCP or TLS shutdown.
    /// A fenced connection is only dropped: nothing more may reach the server, not even a TLS
    /// close_notify.
    pub async fn close(mut self) {
        if self.fenced {
            return;
        }
        if !self.session.is_done() {
            self.session.finish();
            let bound = self.params.command_timeout.min(QUIT_TIMEOUT);
            let (deadline, mut nothing) = (LeaseDeadline::default(), ());
            let quit = self.run(&mut [], 0, &deadline, &mut nothing);
            let _ = tokio::time::timeout(bound, quit).await;
        }
        let _ = tokio::time::timeout(QUIT_TIMEOUT, self.stream.shutdown()).await;
    }

    /// Runs the session until it is idle or done: writes what it queues, reads the replies,
    /// answers its events. Results of transaction `base + i` land in `results[i]` and go to
    /// `recorder` at once. Returns why the session failed, if it did, once what the recorder
    /// started has ended.
    async fn run(
        &mut self,
        results: &mut [Vec<RecipientResult>],
        base: usize,
        deadline: &LeaseDeadline,
        recorder: &mut dyn Recorder,
    ) -> Option<String> {
        let mut recording = Vec::new();
        let failure = self
            .drive(results, base, deadline, recorder, &mut recording)
            .await;
        settle(&mut recording).await;
        failure
    }

    async fn drive(
        &mut self,
        results: &mut [Vec<RecipientResult>],
        base: usize,
        deadline: &LeaseDeadline,
        recorder: &mut dyn Recorder,
        recording: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Option<String> {
        let (host, addr) = (self.host.as_str(), self.addr);
        let session = &mut self.session;
        let stream = &mut self.stream;
        let mut failure: Option<String> = None;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(event) = session.poll_event() {
                match event {
                    ClientEvent::StartTls => {
                        flush(session, stream).await;
                        match upgrade(&self.params, host, addr, stream).await {
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
                        let flushed = flush(session, stream).await;
                        // The previous message's result is recorded before this one can be
                        // delivered: a crash repeats at most one message.
                        settle(recording).await;
                        if !flushed {
                            session.handle_disconnect();
                        } else if deadline.is_valid() {
                            session.commit();
                        } else {
                            tracing::warn!(%host, %addr, transaction = index, "lease deadline passed before the end of data; dropping the connection");
                            session.abort_commit(DEADLINE_PASSED);
                            self.fenced = true;
                        }
                    }
                    ClientEvent::TransactionDone { index, results: r } => {
                        if let Some(i) = index.checked_sub(base)
                            && let Some(slot) = results.get_mut(i)
                        {
                            recording.extend(recorder.record(i, &r));
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
            if self.fenced {
                return failure;
            }
            if !flush(session, stream).await {
                session.handle_disconnect();
                continue;
            }
            if session.is_done() || session.is_idle() {
                return failure;
            }
            let timeout = if session.expects_data_reply() {
                self.params.data_timeout
            } else {
                self.params.command_timeout
            };
            match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                Err(_) => session.handle_timeout(),
                Ok(Ok(0)) | Ok(Err(_)) => session.handle_disconnect(),
                Ok(Ok(n)) => session.handle_input(&buf[..n]),
            }
        }
    }
}

/// Takes each transaction's recipient results as soon as its end-of-data reply arrives (see
/// [`Connection::send`]).
pub trait Recorder: Send {
    /// Results of the `index`-th transaction given to `send`. A returned task (making them
    /// durable) is awaited before the next end of data, and before `send` returns.
    fn record(
        &mut self,
        index: usize,
        results: &[RecipientResult],
    ) -> Option<tokio::task::JoinHandle<()>>;
}

/// Records nothing.
impl Recorder for () {
    fn record(&mut self, _: usize, _: &[RecipientResult]) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}

/// Waits for every recording started so far.
async fn settle(recording: &mut Vec<tokio::task::JoinHandle<()>>) {
    for task in recording.drain(..) {
        let _ = task.await;
    }
}

/// Longest wait for the reply to QUIT, and for the shutdown after it.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

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
    use crate::delivery::client::TlsPolicy;

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

    fn params() -> ConnectionParams {
        ConnectionParams {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            tls: crate::net::tls::outbound_client_config(),
        }
    }

    fn config() -> ClientConfig {
        ClientConfig {
            helo_name: "out.test".into(),
            tls: TlsPolicy::Disabled,
            tls_available: false,
            auth: None,
            allow_plain_auth: false,
        }
    }

    fn tx(rcpt: &str) -> Transaction {
        Transaction {
            mail_from: "a@here.test".into(),
            rcpt_to: vec![rcpt.into()],
            body: Arc::from(&b"Subject: s\r\n\r\nbody\r\n"[..]),
            smtputf8: false,
            body_8bit: false,
        }
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        (listener, addr)
    }

    async fn send_one(deadline: &LeaseDeadline) -> (Vec<Vec<RecipientResult>>, Vec<String>, bool) {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(receiver(listener));
        let mut conn = Connection::open(&params(), addr, "mx.test", config())
            .await
            .expect("greeted");
        let results = conn
            .send(vec![tx("x@r.test"), tx("y@r.test")], deadline, &mut ())
            .await
            .expect("answered");
        conn.close().await;
        let (stored, cut) = server.await.expect("receiver");
        (results, stored, cut)
    }

    #[tokio::test]
    async fn one_connection_takes_one_batch_after_another_until_its_limit() {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(receiver(listener));
        let deadline = LeaseDeadline::default();
        deadline.renewed(tokio::time::Instant::now(), Duration::from_secs(60));
        let mut conn = Connection::open(&params(), addr, "mx.test", config())
            .await
            .expect("greeted");
        let age = Duration::from_secs(60);
        assert!(conn.reusable(2, age));
        let first = conn
            .send(vec![tx("x@r.test")], &deadline, &mut ())
            .await
            .expect("x");
        assert!(conn.reusable(2, age), "one of two messages sent");
        let second = conn
            .send(vec![tx("y@r.test")], &deadline, &mut ())
            .await
            .expect("y");
        assert!(
            !conn.reusable(2, age),
            "the connection's two messages are sent"
        );
        assert!(
            !conn.reusable(10, Duration::ZERO),
            "the connection is too old"
        );
        for (results, rcpt) in [(first, "x@r.test"), (second, "y@r.test")] {
            assert_eq!(results.len(), 1);
            assert_eq!(results[0][0].recipient, rcpt);
            assert_eq!(results[0][0].outcome, Outcome::Delivered);
        }
        conn.close().await;
        // The receiver accepts a single connection: both messages came over it, and it ended
        // with QUIT (the receiver returns only then or on a cut).
        let (stored, cut) = server.await.expect("receiver");
        assert_eq!(stored.len(), 2);
        assert!(!cut);
    }

    /// Records each transaction slowly, noting when each recording ended.
    struct SlowRecorder(Arc<std::sync::Mutex<Vec<String>>>);

    impl Recorder for SlowRecorder {
        fn record(
            &mut self,
            index: usize,
            results: &[RecipientResult],
        ) -> Option<tokio::task::JoinHandle<()>> {
            let log = self.0.clone();
            let rcpt = results[0].recipient.clone();
            Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                log.lock()
                    .expect("log")
                    .push(format!("recorded {index} {rcpt}"));
            }))
        }
    }

    #[tokio::test]
    async fn each_result_is_recorded_before_the_next_message_is_delivered() {
        let (listener, addr) = listener().await;
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server_log = log.clone();
        // A receiver that notes each end of data it takes.
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 mx ESMTP\r\n").await.expect("greet");
            let (mut in_data, mut n) = (false, 0);
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = if in_data {
                    if line != "." {
                        continue;
                    }
                    in_data = false;
                    server_log
                        .lock()
                        .expect("log")
                        .push(format!("delivered {n}"));
                    n += 1;
                    b"250 2.0.0 queued\r\n"
                } else {
                    match line.get(..4).unwrap_or_default() {
                        "EHLO" => b"250-mx\r\n250 PIPELINING\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go\r\n"
                        }
                        "QUIT" => break,
                        _ => b"250 ok\r\n",
                    }
                };
                write.write_all(reply).await.expect("w");
            }
        });
        let deadline = LeaseDeadline::default();
        deadline.renewed(tokio::time::Instant::now(), Duration::from_secs(60));
        let mut conn = Connection::open(&params(), addr, "mx.test", config())
            .await
            .expect("greeted");
        let mut recorder = SlowRecorder(log.clone());
        let txs = vec![tx("a@r.test"), tx("b@r.test"), tx("c@r.test")];
        let results = conn
            .send(txs, &deadline, &mut recorder)
            .await
            .expect("sent");
        assert_eq!(results.len(), 3);
        conn.close().await;
        server.await.expect("server");
        let log = log.lock().expect("log").clone();
        assert_eq!(
            log,
            [
                "delivered 0",
                "recorded 0 a@r.test",
                "delivered 1",
                "recorded 1 b@r.test",
                "delivered 2",
                "recorded 2 c@r.test",
            ],
            "a crash repeats at most the one message being recorded"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_notices_the_server_hanging_up() {
        let (listener, addr) = listener().await;
        let (idle, idle_seen) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut lines = BufReader::new(&mut socket);
            lines
                .get_mut()
                .write_all(b"220 mx\r\n")
                .await
                .expect("greet");
            let mut line = String::new();
            lines.read_line(&mut line).await.expect("ehlo");
            lines.get_mut().write_all(b"250 mx\r\n").await.expect("w");
            // Once the client is idle: an idle timeout, as servers have.
            let _ = idle_seen.await;
            lines
                .get_mut()
                .write_all(b"421 4.4.2 idle too long\r\n")
                .await
                .expect("w");
        });
        let mut conn = Connection::open(&params(), addr, "mx.test", config())
            .await
            .expect("greeted");
        let _ = idle.send(());
        tokio::time::timeout(Duration::from_secs(5), conn.spoke_unasked())
            .await
            .expect("the 421 or the close was seen");
        server.await.expect("server");
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
