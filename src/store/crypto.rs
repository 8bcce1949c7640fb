//! Encryption at rest under a master key (`MAIRUST_MASTER_KEY` / `security.master_key`).
//!
//! The master key is 32 random bytes, written as base64 (`mairust key generate` prints one).
//! HKDF-SHA256 derives three independent keys from it: one for message bodies, one for stored
//! secrets (DKIM private keys), and one for content addresses. Bodies and secrets are sealed
//! with XChaCha20-Poly1305 and a random 192-bit nonce each time. A body's blob key is the
//! HMAC-SHA256 of its plaintext under the address key, so identical bodies still share one blob
//! but the stored keys reveal nothing about the content (a plain SHA-256 would let anyone
//! confirm a guessed message). A check value stored in the database makes a wrong or missing
//! key a clear startup error instead of garbage.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of an encrypted blob (format version 1).
const BLOB_MAGIC: &[u8] = b"MRE1";
/// Prefix of an encrypted secret in text columns.
const SECRET_PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key is not 32 bytes of base64.
    #[error(
        "the master key must be 32 random bytes in base64 (generate one with `mairust key generate`): {0}"
    )]
    BadKey(String),
    /// Authentication failed: wrong key or corrupted data.
    #[error("cannot decrypt {0}: wrong master key or corrupted data")]
    Decrypt(&'static str),
    /// The data is not in the expected encrypted format.
    #[error("{0} is not encrypted data of a known format")]
    Format(&'static str),
}

/// Keys derived from the master key.
#[derive(Clone)]
pub struct Cipher {
    bodies: XChaCha20Poly1305,
    secrets: XChaCha20Poly1305,
    address: [u8; 32],
    check: String,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    /// Derives the keys from a base64 master key.
    pub fn from_master_key(master: &str) -> Result<Self, CryptoError> {
        let raw = B64
            .decode(master.trim())
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        if raw.len() != 32 {
            return Err(CryptoError::BadKey(format!("got {} bytes", raw.len())));
        }
        let hk = Hkdf::<Sha256>::new(Some(b"mairust-v1"), &raw);
        let derive = |info: &[u8]| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's output limit.
            let _ = hk.expand(info, &mut out);
            out
        };
        let check = hex::encode(derive(b"key-check"));
        Ok(Self {
            bodies: XChaCha20Poly1305::new(&derive(b"bodies").into()),
            secrets: XChaCha20Poly1305::new(&derive(b"secrets").into()),
            address: derive(b"address"),
            check,
        })
    }

    /// A new random master key, base64.
    pub fn generate_master_key() -> String {
        B64.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// A value that identifies the key without revealing it, stored to detect a wrong key.
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// The content address of a plaintext body under this key.
    pub fn address(&self, plaintext: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.address)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(plaintext);
        hex::encode(mac.finalize().into_bytes())
    }

    fn seal(aead: &XChaCha20Poly1305, plaintext: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce cannot fail.
        let ciphertext = aead.encrypt(&nonce, plaintext).unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    fn open(
        aead: &XChaCha20Poly1305,
        sealed: &[u8],
        what: &'static str,
    ) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Format(what));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        aead.decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| CryptoError::Decrypt(what))
    }

    /// Encrypts a message body for the blob store.
    pub fn seal_blob(&self, plaintext: &[u8]) -> Vec<u8> {
        [BLOB_MAGIC, &Self::seal(&self.bodies, plaintext)].concat()
    }

    /// Decrypts a blob written by [`Cipher::seal_blob`].
    pub fn open_blob(&self, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let sealed = stored
            .strip_prefix(BLOB_MAGIC)
            .ok_or(CryptoError::Format("message body"))?;
        Self::open(&self.bodies, sealed, "message body")
    }

    /// Encrypts a secret for a text column.
    pub fn seal_secret(&self, plaintext: &[u8]) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            B64.encode(Self::seal(&self.secrets, plaintext))
        )
    }

    /// Decrypts a secret written by [`Cipher::seal_secret`].
    pub fn open_secret(&self, stored: &str) -> Result<Vec<u8>, CryptoError> {
        let sealed = stored
            .strip_prefix(SECRET_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(CryptoError::Format("secret"))?;
        Self::open(&self.secrets, &sealed, "secret")
    }

    /// Whether a stored blob is encrypted.
    pub fn is_sealed_blob(stored: &[u8]) -> bool {
        stored.starts_with(BLOB_MAGIC)
    }

    /// Whether a stored secret is encrypted.
    pub fn is_sealed_secret(stored: &str) -> bool {
        stored.starts_with(SECRET_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_and_secrets_round_trip_and_wrong_keys_fail() {
        let key = Cipher::generate_master_key();
        let c = Cipher::from_master_key(&key).expect("key");
        let sealed = c.seal_blob(b"Subject: secret\r\n\r\nbody");
        assert!(Cipher::is_sealed_blob(&sealed));
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "plaintext must not show"
        );
        assert_eq!(
            c.open_blob(&sealed).expect("open"),
            b"Subject: secret\r\n\r\nbody"
        );
        let s = c.seal_secret(b"dkim private key");
        assert!(Cipher::is_sealed_secret(&s));
        assert_eq!(c.open_secret(&s).expect("open"), b"dkim private key");

        let other = Cipher::from_master_key(&Cipher::generate_master_key()).expect("key");
        assert!(matches!(
            other.open_blob(&sealed),
            Err(CryptoError::Decrypt(_))
        ));
        assert!(matches!(
            other.open_secret(&s),
            Err(CryptoError::Decrypt(_))
        ));
        assert_ne!(other.check_value(), c.check_value());
        assert!(matches!(
            c.open_blob(b"plain text"),
            Err(CryptoError::Format(_))
        ));
    }

    #[test]
    fn addresses_are_keyed_and_stable() {
        let c = Cipher::from_master_key(&Cipher::generate_master_key()).expect("key");
        assert_eq!(c.address(b"x"), c.address(b"x"));
        assert_eq!(c.address(b"x").len(), 64);
        assert_ne!(
            c.address(b"x"),
            crate::store::blob_key(b"x"),
            "not the plain hash"
        );
        let d = Cipher::from_master_key(&Cipher::generate_master_key()).expect("key");
        assert_ne!(c.address(b"x"), d.address(b"x"));
    }

    #[test]
    fn malformed_master_keys_are_refused() {
        assert!(Cipher::from_master_key("short").is_err());
        assert!(Cipher::from_master_key(&B64.encode([0u8; 16])).is_err());
    }
}
