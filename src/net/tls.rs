//! TLS for STARTTLS: the configured certificate, or a self-signed one generated at first start
//! and kept in the data directory so that it stays the same across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Paths of the certificate and key in use, and whether they were generated.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Finds or creates the certificate: `tls.cert`/`tls.key` when set, otherwise
/// `<data_dir>/tls/{cert,key}.pem`, generated for `server.hostname` (as its subject's common
/// name and its DNS subject alternative name) if missing or if it does not name the host (an
/// older generated certificate, or a changed host name).
pub fn ensure_certificate(config: &Config) -> anyhow::Result<CertPaths> {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        return Ok(CertPaths {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    let dir = config.server.data_dir.join("tls");
    let paths = CertPaths {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let hostname = &config.server.hostname;
    let now = chrono::Utc::now().timestamp();
    if paths.key.exists() && names_host(&paths.cert, hostname) {
        match first_certificate(&paths.cert).and_then(|der| not_after(&der)) {
            // Valid for more than RENEW_BEFORE, and not one of the century-long certificates
            // earlier versions made.
            Some(until) if until - now > RENEW_BEFORE && until - now <= VALIDITY + DAY => {
                return Ok(paths);
            }
            until => tracing::info!(
                cert = %paths.cert.display(),
                not_after = ?until.and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(|t| t.to_rfc3339()),
                "the generated certificate expires within 30 days (or is not one of a year); making a new one"
            ),
        }
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create TLS directory {}", dir.display()))?;
    let (cert, key) = generate(hostname)?;
    write_private(&paths.key, key.as_bytes())?;
    std::fs::write(&paths.cert, cert)
        .with_context(|| format!("cannot write {}", paths.cert.display()))?;
    tracing::info!(
        cert = %paths.cert.display(),
        hostname = %config.server.hostname,
        "generated a self-signed TLS certificate; set tls.cert and tls.key to use your own"
    );
    Ok(paths)
}

/// A generated certificate is valid for a year (from yesterday, for clocks a little behind),
/// and made again at a start within 30 days of its end.
const DAY: i64 = 86_400;
const VALIDITY: i64 = 365 * DAY;
const RENEW_BEFORE: i64 = 30 * DAY;

/// A self-signed certificate and its key (PEM) with `hostname` as the subject's common name
/// and as a DNS subject alternative name, valid for [`VALIDITY`] (rcgen's default is
/// 1975 to 4096, which testssl.sh and careful clients flag).
fn generate(hostname: &str) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()])
        .with_context(|| format!("`{hostname}` cannot be a certificate name"))?;
    let day = |offset: i64| {
        let date = chrono::Utc::now() + chrono::Duration::seconds(offset);
        use chrono::Datelike;
        rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
    };
    params.not_before = day(-DAY);
    params.not_after = day(VALIDITY);
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = subject;
    let key = rcgen::KeyPair::generate().context("cannot generate a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot generate a self-signed certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The PEM certificate at `path` is readable and mentions `hostname` (in its subject or
/// SAN; a generated certificate holds no other names).
fn names_host(path: &Path, hostname: &str) -> bool {
    let Ok(mut certs) = CertificateDer::pem_file_iter(path) else {
        return false;
    };
    let needle = hostname.as_bytes();
    matches!(certs.next(), Some(Ok(der))
        if der.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle)))
}

/// The first certificate of a PEM file.
fn first_certificate(path: &Path) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).ok()?.next()?.ok()
}

/// The end of a DER certificate's validity, in seconds since the epoch: the `notAfter` of
/// `tbsCertificate.validity` (RFC 5280 §4.1), found by walking the DER structure.
fn not_after(der: &[u8]) -> Option<i64> {
    /// One DER element: its tag, its content, and what follows it.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (_, certificate, _) = element(der)?;
    let (_, tbs, _) = element(certificate)?;
    let (tag, _, after_version) = element(tbs)?;
    let tbs = if tag == 0xa0 { after_version } else { tbs };
    let (_, _, rest) = element(tbs)?; // serialNumber
    let (_, _, rest) = element(rest)?; // signature
    let (_, _, rest) = element(rest)?; // issuer
    let (_, validity, _) = element(rest)?;
    let (_, _, rest) = element(validity)?; // notBefore
    let (tag, time, _) = element(rest)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        // UTCTime: two-digit years, 50 to 99 in the 1900s (RFC 5280 §4.1.2.5.1).
        0x17 => {
            let year: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if year >= 50 { "19" } else { "20" })
        }
        0x18 => text.to_string(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// A rustls server configuration from PEM files.
pub fn server_config(paths: &CertPaths) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .with_context(|| format!("cannot read certificate {}", paths.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in {}", paths.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", paths.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .with_context(|| format!("cannot read private key {}", paths.key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and private key do not match")?;
    // The server's order (strongest first) decides, not the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// TLS for outbound STARTTLS. Certificates are not verified: opportunistic and "required"
/// TLS protect against passive eavesdropping (like Postfix's `may` and `encrypt` levels);
/// MX names come from unauthenticated DNS, so verifying them against WebPKI would add no
/// protection without DANE or MTA-STS. Handshake signatures are still checked.
pub fn outbound_client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(config) => Arc::new(config),
        // The ring provider supports the default versions; this cannot fail.
        Err(e) => unreachable!("ring provider rejected default TLS versions: {e}"),
    }
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_is_reused() {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::load_from(None, Vec::new()).expect("defaults");
        config.server.data_dir = dir.path().to_path_buf();
        config.server.hostname = "mx.example.test".into();
        let first = ensure_certificate(&config).expect("generate");
        let pem = std::fs::read(&first.cert).expect("cert");
        server_config(&first).expect("usable");
        let second = ensure_certificate(&config).expect("reuse");
        assert_eq!(std::fs::read(&second.cert).expect("cert"), pem);
        // Another host name gets a new certificate.
        config.server.hostname = "mail.other.test".into();
        let third = ensure_certificate(&config).expect("regenerate");
        assert_ne!(std::fs::read(&third.cert).expect("cert"), pem);
        assert!(names_host(&third.cert, "mail.other.test"));
    }

    #[test]
    fn generated_certificate_names_the_host() {
        let (cert, _) = generate("mx.example.test").expect("generate");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        let text = String::from_utf8_lossy(&der);
        assert!(!text.contains("rcgen"), "library default subject left in");
        // Issuer and subject (self-signed, so the same name) and the SAN hold the host name.
        assert_eq!(text.matches("mx.example.test").count(), 3, "{text}");
    }

    #[test]
    fn generated_certificates_are_valid_for_a_year() {
        let (pem, _) = generate("mail.example.test").expect("generate");
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .expect("one")
            .expect("pem");
        let until = not_after(&der).expect("notAfter");
        let left = until - chrono::Utc::now().timestamp();
        assert!(
            (VALIDITY - 2 * DAY..=VALIDITY + DAY).contains(&left),
            "{left}"
        );
        // rcgen's default, as earlier versions generated: GeneralizedTime in 4096.
        let params = rcgen::CertificateParams::new(vec!["old.test".into()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let old = params.self_signed(&key).expect("cert");
        let until = not_after(old.der()).expect("notAfter");
        assert_eq!(
            chrono::DateTime::from_timestamp(until, 0).map(|t| t.to_rfc3339()),
            Some("4096-01-01T00:00:00+00:00".into())
        );
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None, "truncated input");
    }
}
