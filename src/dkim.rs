//! DKIM: per-domain keys (Ed25519 or RSA-2048) and signing of outbound mail with mail-auth.
//!
//! Private keys (DER: PKCS#8 for Ed25519, PKCS#1 for RSA) are kept in their stored form by
//! [`DkimKeyRecord`] (`crate::store::dkim_keys`); this module only generates and signs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

use crate::store::crypto::Cipher;
use crate::store::dkim_keys::UnusableKey;
use crate::store::{DkimKeyRecord, now_millis};

/// Headers covered by the signature (RFC 6376 §5.4.1 recommendations).
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Why a DKIM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// Key generation or signing failed in the crypto library.
    #[error("DKIM crypto error: {0}")]
    Crypto(String),
    /// The stored key cannot be used.
    #[error("stored DKIM key for {domain} is unusable: {reason}")]
    BadKey {
        /// Signing domain.
        domain: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<UnusableKey> for DkimError {
    fn from(e: UnusableKey) -> Self {
        Self::BadKey {
            domain: e.domain,
            reason: e.reason,
        }
    }
}

/// Key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Ed25519 (RFC 8463).
    Ed25519,
    /// RSA-2048 with SHA-256.
    Rsa,
}

impl Algorithm {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::Rsa => "rsa",
        }
    }
}

/// Generates a key for `domain` under `selector`. RSA generation takes a moment: call it off
/// the async threads.
pub fn generate(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    cipher: Option<&Cipher>,
) -> Result<DkimKeyRecord, DkimError> {
    let crypto = |e: &dyn std::fmt::Display| DkimError::Crypto(e.to_string());
    let (private_der, public) = match algorithm {
        Algorithm::Ed25519 => {
            let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| crypto(&e))?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| crypto(&e))?;
            (pkcs8, key.public_key())
        }
        Algorithm::Rsa => {
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(2048)
                .map_err(|e| crypto(&e))?;
            let (private, _) = pair.into_inner();
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&private).map_err(|e| crypto(&e))?;
            // DNS gets SubjectPublicKeyInfo, which every verifier accepts.
            let spki = rsa::RsaPublicKey::from(&key)
                .to_public_key_der()
                .map_err(|e| crypto(&e))?;
            (private, spki.as_bytes().to_vec())
        }
    };
    Ok(DkimKeyRecord {
        domain: domain.to_ascii_lowercase(),
        selector: selector.to_string(),
        algorithm: algorithm.as_str().to_string(),
        private_key: DkimKeyRecord::encode_private(&private_der, cipher),
        public_key: B64.encode(public),
        created_at: now_millis(),
    })
}

/// The DNS TXT record to publish: its name and value.
pub fn dns_record(key: &DkimKeyRecord) -> (String, String) {
    (
        format!("{}._domainkey.{}", key.selector, key.domain),
        format!("v=DKIM1; k={}; p={}", key.algorithm, key.public_key),
    )
}

/// Signs `message` with `key`; returns the `DKIM-Signature` header line(s) to prepend.
pub fn sign(
    key: &DkimKeyRecord,
    message: &[u8],
    cipher: Option<&Cipher>,
) -> Result<String, DkimError> {
    let der = key.private_der(cipher)?;
    let bad = |e: &dyn std::fmt::Display| DkimError::BadKey {
        domain: key.domain.clone(),
        reason: e.to_string(),
    };
    let signature = match key.algorithm.as_str() {
        "ed25519" => DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&der).map_err(|e| bad(&e))?)
            .domain(&key.domain)
            .selector(&key.selector)
            .headers(SIGNED_HEADERS.iter().copied())
            .sign(message),
        "rsa" => DkimSigner::from_key(
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)))
                .map_err(|e| bad(&e))?,
        )
        .domain(&key.domain)
        .selector(&key.selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .sign(message),
        other => return Err(bad(&format!("unknown algorithm `{other}`"))),
    }
    .map_err(|e| DkimError::Crypto(e.to_string()))?;
    Ok(signature.to_header())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, ResolverCache, Txt};
    use std::borrow::Borrow;
    use std::hash::Hash;
    use std::sync::Arc;

    const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n\
Subject: signed\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n\
Hello Bob.\r\n.leading dot\r\n";

    /// Answers TXT lookups from one record, so verification needs no DNS server.
    struct OneRecord(Box<str>, Txt);

    impl ResolverCache<Box<str>, Txt> for OneRecord {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            (self.0.borrow() == name).then(|| self.1.clone())
        }
        fn remove<Q>(&self, _: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            None
        }
        fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
    }

    pub(crate) async fn verifies(signed: &[u8], key: &DkimKeyRecord) -> DkimResult {
        let (name, value) = dns_record(key);
        let record = DomainKey::parse(value.as_bytes()).expect("DNS record parses");
        let cache = OneRecord(format!("{name}.").into(), Txt::DomainKey(Arc::new(record)));
        // Never queried: the record comes from the cache. Loopback only, to be sure.
        let authenticator = MessageAuthenticator::new(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![
                hickory_resolver::config::NameServerConfig::udp([127, 0, 0, 1].into()),
            ]),
            Default::default(),
        )
        .expect("resolver");
        let message = AuthenticatedMessage::parse(signed).expect("parse");
        let results = authenticator
            .verify_dkim(mail_auth::Parameters::new(&message).with_txt_cache(&cache))
            .await;
        results
            .first()
            .map(|r| r.result().clone())
            .unwrap_or(DkimResult::None)
    }

    async fn round_trip(algorithm: Algorithm) {
        let key = generate("example.test", "mr2026", algorithm, None).expect("generate");
        let header = sign(&key, MESSAGE, None).expect("sign");
        assert!(header.starts_with("DKIM-Signature:"), "{header}");
        let signed = [header.as_bytes(), MESSAGE].concat();
        assert_eq!(verifies(&signed, &key).await, DkimResult::Pass);
        let mut tampered = signed.clone();
        let at = tampered.len() - 5;
        tampered[at] = b'X';
        assert_ne!(verifies(&tampered, &key).await, DkimResult::Pass);
    }

    #[test]
    fn sealed_keys_need_the_master_key() {
        let cipher = Cipher::from_master_key(&Cipher::generate_master_key()).expect("key");
        let key =
            generate("example.test", "s", Algorithm::Ed25519, Some(&cipher)).expect("generate");
        assert!(key.private_key.starts_with("enc:v1:"));
        assert!(sign(&key, MESSAGE, Some(&cipher)).is_ok());
        assert!(sign(&key, MESSAGE, None).is_err());
    }

    #[tokio::test]
    async fn ed25519_signatures_verify() {
        round_trip(Algorithm::Ed25519).await;
    }

    #[tokio::test]
    async fn rsa_signatures_verify() {
        round_trip(Algorithm::Rsa).await;
    }
}
