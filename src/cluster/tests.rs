//! In-process clusters and endpoints on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::tls::{self, ALPN, Credentials, SERVER_NAME};
use super::transport::endpoint_configs;
use super::*;

struct Echo;

#[async_trait::async_trait]
impl RequestHandler for Echo {
    async fn handle(&self, from: &str, request: Request) -> Response {
        Response::Error {
            kind: ErrorKind::NotFound,
            message: format!("{from} asked {request:?}"),
        }
    }
}

fn config(secret: &str, seeds: Vec<String>) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        bind: "127.0.0.1:0".into(),
        seeds,
        secret: Some(secret.into()),
        ..ClusterConfig::default()
    }
}

async fn start(id: &str, secret: &str, seeds: &[&Cluster]) -> Cluster {
    let seeds = seeds.iter().map(|c| c.addr().to_string()).collect();
    Cluster::start(
        &config(secret, seeds),
        id.into(),
        vec![Role::Queue],
        Arc::new(Echo),
    )
    .await
    .unwrap()
}

fn states(cluster: &Cluster) -> Vec<(String, MemberState)> {
    cluster
        .members()
        .into_iter()
        .map(|m| (m.node_id, m.state))
        .collect()
}

/// Waits until `cluster`'s view satisfies `ok`, at most `within`.
async fn wait_for(
    cluster: &Cluster,
    within: Duration,
    ok: impl Fn(&[Member]) -> bool,
) -> Result<Duration, Vec<(String, MemberState)>> {
    let start = Instant::now();
    let mut rx = cluster.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if ok(&rx.borrow_and_update()) {
            return Ok(start.elapsed());
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Err(states(cluster));
        }
    }
}

fn all_alive(n: usize) -> impl Fn(&[Member]) -> bool {
    move |members| members.len() == n && members.iter().all(|m| m.state == MemberState::Alive)
}

fn is_down(id: &'static str) -> impl Fn(&[Member]) -> bool {
    move |members| {
        members
            .iter()
            .any(|m| m.node_id == id && m.state == MemberState::Down)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_see_a_crash_and_a_leave() {
    let a = start("a", "one secret", &[]).await;
    let b = start("b", "one secret", &[&a]).await;
    let c = start("c", "one secret", &[&a]).await;
    for node in [&a, &b, &c] {
        wait_for(node, Duration::from_secs(5), all_alive(3))
            .await
            .unwrap();
    }
    assert_eq!(
        a.members()
            .iter()
            .map(|m| m.node_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(a.members().iter().all(|m| m.roles == [Role::Queue]));

    // A crash: c's handle is dropped, its endpoint closes without a goodbye.
    drop(c);
    for node in [&a, &b] {
        let took = wait_for(node, Duration::from_secs(6), is_down("c"))
            .await
            .unwrap();
        assert!(took < Duration::from_secs(6), "{took:?}");
    }

    // A graceful leave is seen at once.
    let started = Instant::now();
    b.leave().await;
    assert!(!b.is_up());
    wait_for(&a, Duration::from_secs(2), is_down("b"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(a.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_member_and_errors_are_typed() {
    let a = start("a", "s", &[]).await;
    let b = start("b", "s", &[&a]).await;
    for node in [&a, &b] {
        wait_for(node, Duration::from_secs(5), all_alive(2))
            .await
            .unwrap();
    }
    let answer = a
        .request(
            "b",
            Request::Retry {
                partition: 3,
                id: 9,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        Response::Error {
            kind: ErrorKind::NotFound,
            message: "a asked Retry { partition: 3, id: 9 }".into()
        }
    );
    // Several at once share the one connection.
    let many = futures::future::join_all((0..10).map(|p| {
        b.request(
            "a",
            Request::Hint {
                partitions: vec![p],
            },
        )
    }))
    .await;
    assert!(many.iter().all(|r| r.is_ok()), "{many:?}");
    // To itself: straight to the handler.
    assert!(matches!(
        a.request("a", Request::Hint { partitions: vec![] }).await,
        Ok(Response::Error { message, .. }) if message.starts_with("a asked")
    ));
    assert!(matches!(
        a.request("zz", Request::Hint { partitions: vec![] }).await,
        Err(ClusterError::UnknownMember(id)) if id == "zz"
    ));
    b.leave().await;
    wait_for(&a, Duration::from_secs(2), is_down("b"))
        .await
        .unwrap();
    let error = a
        .request(
            "b",
            Request::Hint {
                partitions: vec![1],
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ClusterError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("cluster member b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_never_joins() {
    let a = start("a", "right", &[]).await;
    let b = start("b", "right", &[&a]).await;
    let intruder = start("x", "wrong", &[&a, &b]).await;
    wait_for(&a, Duration::from_secs(5), all_alive(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in [&a, &b] {
        assert!(
            node.members().iter().all(|m| m.node_id != "x"),
            "{:?}",
            states(node)
        );
    }
    assert_eq!(intruder.members().len(), 1);
    assert!(matches!(
        intruder
            .request("a", Request::Hint { partitions: vec![] })
            .await,
        Err(ClusterError::UnknownMember(_))
    ));
}

#[tokio::test]
async fn start_errors_name_the_key() {
    let handler: Arc<dyn RequestHandler> = Arc::new(Echo);
    let mut bad = config("s", vec![]);
    bad.bind = "not an address".into();
    let error = Cluster::start(&bad, "n".into(), vec![], handler.clone())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cluster.bind"), "{error}");

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut busy = config("s", vec![]);
    busy.bind = taken.local_addr().unwrap().to_string();
    let error = Cluster::start(&busy, "n".into(), vec![], handler.clone())
        .await
        .unwrap_err();
    assert!(matches!(error, ClusterError::Bind { .. }), "{error}");
    assert!(error.to_string().contains("cluster.bind"), "{error}");

    let mut none = config("s", vec![]);
    none.secret = None;
    let error = Cluster::start(&none, "n".into(), vec![], handler.clone())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cluster.secret"), "{error}");

    let mut wildcard = config("s", vec![]);
    wildcard.advertise = Some("0.0.0.0:7000".into());
    let error = Cluster::start(&wildcard, "n".into(), vec![], handler)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cluster.advertise"), "{error}");
}

#[test]
fn the_advertised_address_skips_loopback_and_the_other_family() {
    let v4: SocketAddr = "0.0.0.0:7946".parse().unwrap();
    let v6: SocketAddr = "[::]:7946".parse().unwrap();
    let ips: Vec<IpAddr> = ["127.0.1.1", "fd00::5", "10.0.0.5"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        pick_advertise(v4, &ips),
        Some("10.0.0.5:7946".parse().unwrap())
    );
    assert_eq!(
        pick_advertise(v6, &ips),
        Some("[fd00::5]:7946".parse().unwrap())
    );
    assert_eq!(pick_advertise(v4, &ips[..2]), None);
}

// --- TLS at the endpoint level ----------------------------------------------------------

fn endpoint(credentials: &Credentials) -> quinn::Endpoint {
    let (server, client) = endpoint_configs(credentials).unwrap();
    let mut endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    endpoint
}

/// Serves one echo stream per connection; errors are the test's business, not the server's.
fn serve_echo(endpoint: &quinn::Endpoint) {
    let endpoint = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    if let Ok(data) = recv.read_to_end(1024).await {
                        let _ = send.write_all(&data).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                }
            });
        }
    });
}

/// Connects with `client` (or the endpoint's default) and exchanges one message.
async fn exchange(
    from: &quinn::Endpoint,
    to: &quinn::Endpoint,
    client: Option<quinn::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let addr = to.local_addr().unwrap();
    let connecting = match client {
        Some(client) => from.connect_with(client, addr, SERVER_NAME),
        None => from.connect(addr, SERVER_NAME),
    }
    .map_err(|e| e.to_string())?;
    let work = async {
        let connection = connecting.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"ping").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1024).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Accepts any server certificate: lets a test check that the *server* refuses a client.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that trusts any server and presents `cert` (a leaf of `secret`) or nothing.
fn lax_client(secret: Option<&str>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match secret {
        None => builder.with_no_client_auth(),
        Some(secret) => {
            let (chain, key) = tls::leaf_for_tests(secret);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap(),
    ))
}

#[tokio::test]
async fn the_same_secret_connects_and_another_is_refused_both_ways() {
    crate::net::tls::install_crypto_provider();
    let one = endpoint(&tls::from_secret("one").unwrap());
    let one_again = endpoint(&tls::from_secret("one").unwrap());
    let two = endpoint(&tls::from_secret("two").unwrap());
    for e in [&one, &one_again, &two] {
        serve_echo(e);
    }
    assert_eq!(exchange(&one, &one_again, None).await.unwrap(), b"ping");
    assert_eq!(exchange(&one_again, &one, None).await.unwrap(), b"ping");
    assert!(exchange(&one, &two, None).await.is_err());
    assert!(exchange(&two, &one, None).await.is_err());
    // The server side verifies too: a client that skips checking the server still cannot
    // get anything without a certificate of the cluster.
    assert!(
        exchange(&two, &one, Some(lax_client(Some("two"))))
            .await
            .is_err()
    );
    assert!(exchange(&two, &one, Some(lax_client(None))).await.is_err());
    assert_eq!(
        exchange(&two, &one, Some(lax_client(Some("one"))))
            .await
            .unwrap(),
        b"ping"
    );
}

/// Writes a CA and a leaf it signed (for [`SERVER_NAME`]) as PEM files in `dir`.
fn write_operator_files(dir: &std::path::Path, name: &str) -> crate::config::ClusterTls {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let files = crate::config::ClusterTls {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
    files
}

#[tokio::test]
async fn operator_certificates_verify_against_their_ca() {
    crate::net::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ours = write_operator_files(dir.path(), "ours");
    let theirs = write_operator_files(dir.path(), "theirs");
    let one = endpoint(&tls::from_files(&ours).unwrap());
    let two = endpoint(&tls::from_files(&ours).unwrap());
    let other = endpoint(&tls::from_files(&theirs).unwrap());
    for e in [&one, &two, &other] {
        serve_echo(e);
    }
    assert_eq!(exchange(&one, &two, None).await.unwrap(), b"ping");
    assert!(exchange(&one, &other, None).await.is_err());
    assert!(exchange(&other, &two, None).await.is_err());
    // A secret-derived node is not in an operator-CA cluster either.
    let secret = endpoint(&tls::from_secret("s").unwrap());
    serve_echo(&secret);
    assert!(exchange(&secret, &one, None).await.is_err());
    assert!(exchange(&one, &secret, None).await.is_err());
}
