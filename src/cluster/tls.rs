//! Mutual TLS between nodes: every node presents a certificate that chains to the cluster CA
//! and accepts only peers whose certificate does too.
//!
//! The CA is either derived from `cluster.secret` (HKDF-SHA256 of the secret seeds an Ed25519
//! key, so every node with the same secret computes the same CA key and trusts the same
//! issuer; the private key never leaves the process) or given as PEM files in
//! `cluster.tls.{ca,cert,key}`. Leaf certificates name [`SERVER_NAME`] rather than addresses,
//! so a node's address can change without a new certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::ClusterTls;

/// The DNS name every cluster leaf certificate carries and every node expects of its peer.
pub const SERVER_NAME: &str = "mairust-cluster";

/// The ALPN protocol of the cluster's QUIC connections.
pub const ALPN: &[u8] = b"mairust-cluster/1";

/// Why the cluster's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither a secret nor certificate files were configured.
    #[error(
        "the cluster needs credentials: set cluster.secret, or cluster.tls.ca, cluster.tls.cert and cluster.tls.key"
    )]
    NoCredentials,
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {key} ({}): {message}; fix the file or the path in {key}", path.display())]
    File {
        /// The configuration key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificates or key were refused by rustls.
    #[error(
        "the cluster TLS configuration is not usable: {0}; check cluster.tls.cert and cluster.tls.key (they must match)"
    )]
    Rustls(#[from] rustls::Error),
    /// The CA could not be used to verify peers.
    #[error("the cluster CA cannot verify peers: {0}; check cluster.tls.ca")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Generating the certificates from the secret failed.
    #[error("cannot make the cluster certificates from cluster.secret: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The TLS configurations of one node: as a server (accepting peers) and as a client.
#[derive(Clone)]
pub struct Credentials {
    /// For incoming connections; requires a client certificate.
    pub server: Arc<ServerConfig>,
    /// For outgoing connections; presents this node's certificate.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

/// Builds the credentials from the configured secret or files (files win if both are set;
/// config validation reports that case).
pub fn credentials(
    secret: Option<&str>,
    files: Option<&ClusterTls>,
) -> Result<Credentials, TlsError> {
    match (files, secret) {
        (Some(files), _) => from_files(files),
        (None, Some(secret)) if !secret.is_empty() => from_secret(secret),
        _ => Err(TlsError::NoCredentials),
    }
}

/// The PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows it.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The CA key every node with `secret` derives.
fn ca_key(secret: &str) -> Result<KeyPair, TlsError> {
    let mut seed = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"mairust cluster ca"), secret.as_bytes())
        .expand(b"ed25519 ca key v1", &mut seed)
        .map_err(|_| TlsError::Generate(rcgen::Error::CouldNotParseKeyPair))?;
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &PKCS_ED25519,
    )?)
}

/// A CA derived from `secret` and a fresh leaf signed by it.
pub fn from_secret(secret: &str) -> Result<Credentials, TlsError> {
    let (ca, chain, key) = secret_material(secret)?;
    build(ca, chain, key)
}

/// The CA certificate, a fresh leaf chain and its key, for `secret`.
#[allow(clippy::type_complexity)]
fn secret_material(
    secret: &str,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    TlsError,
> {
    let ca_key = ca_key(secret)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "MaiRust cluster CA");
    ca.distinguished_name = name;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, SERVER_NAME);
    leaf.distinguished_name = name;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key)?;

    let chain = vec![leaf.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((vec![ca.der().clone()], chain, key))
}

/// A leaf certificate chain and key of the CA of `secret` (tests build odd clients with it).
#[cfg(test)]
pub fn leaf_for_tests(secret: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (_, chain, key) = secret_material(secret).unwrap();
    (chain, key)
}

/// The operator's CA, certificate and key.
pub fn from_files(files: &ClusterTls) -> Result<Credentials, TlsError> {
    let ca = read_certs("cluster.tls.ca", &files.ca)?;
    let chain = read_certs("cluster.tls.cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| TlsError::File {
        key: "cluster.tls.key",
        path: files.key.clone(),
        message: error.to_string(),
    })?;
    build(ca, chain, key)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Server and client configurations that present `chain` and accept only peers chaining to
/// `ca` (TLS 1.3, as QUIC requires).
fn build(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Credentials, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert)?;
    }
    let roots = Arc::new(roots);

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(Credentials {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_key_depends_only_on_the_secret() {
        let a = ca_key("one").unwrap().public_key_raw().to_vec();
        assert_eq!(a, ca_key("one").unwrap().public_key_raw());
        assert_ne!(a, ca_key("two").unwrap().public_key_raw());
    }

    #[test]
    fn credentials_need_a_secret_or_files() {
        assert!(matches!(
            credentials(None, None),
            Err(TlsError::NoCredentials)
        ));
        assert!(matches!(
            credentials(Some(""), None),
            Err(TlsError::NoCredentials)
        ));
        assert!(credentials(Some("s3cret"), None).is_ok());
    }

    #[test]
    fn missing_files_name_the_key() {
        let files = ClusterTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let error = from_files(&files).unwrap_err().to_string();
        assert!(error.contains("cluster.tls.ca"), "{error}");
    }
}
