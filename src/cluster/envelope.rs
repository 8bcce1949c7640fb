//! The wire format between nodes: a version byte, then the message in postcard.
//!
//! The version byte lets a later release change the messages and still refuse (with a clear
//! log line) what it cannot read, instead of misreading it.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope version this build writes and reads.
pub const VERSION: u8 = 1;

/// Largest request or response accepted on a stream, envelope included.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a message could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Nothing was received.
    #[error("empty cluster message: the peer sent nothing")]
    Empty,
    /// Written by a version of MaiRust this one does not understand.
    #[error(
        "cluster message has envelope version {0}, this node reads only version {VERSION}; run the same MaiRust version on every node"
    )]
    UnknownVersion(u8),
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("cluster message of {0} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    /// Not a valid message of the expected type.
    #[error("cluster message cannot be decoded: {0}")]
    Codec(#[from] postcard::Error),
}

/// Encodes `message` in an envelope.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, EnvelopeError> {
    let bytes = postcard::to_extend(message, vec![VERSION])?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a message from its envelope.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge(bytes.len()));
    }
    let body = open(bytes)?;
    Ok(postcard::from_bytes(body)?)
}

/// Checks the version byte and returns what follows it (foca packets travel this way, their
/// body in foca's own postcard codec).
pub fn open(bytes: &[u8]) -> Result<&[u8], EnvelopeError> {
    match bytes.split_first() {
        None => Err(EnvelopeError::Empty),
        Some((&VERSION, body)) => Ok(body),
        Some((&other, _)) => Err(EnvelopeError::UnknownVersion(other)),
    }
}

/// Puts `body` (already encoded) in an envelope.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(VERSION);
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ErrorKind, Request, Response};

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            Request::Hint {
                partitions: vec![0, 7, 63],
            },
            Request::Retry {
                partition: 3,
                id: -5,
            },
            Request::Cancel {
                partition: 1,
                id: i64::MAX,
                bounce: true,
            },
        ];
        for request in requests {
            let bytes = encode(&request).unwrap();
            assert_eq!(bytes[0], VERSION);
            assert_eq!(decode::<Request>(&bytes).unwrap(), request);
        }
        let response = Response::Error {
            kind: ErrorKind::NotOwned,
            message: "not mine".into(),
        };
        assert_eq!(
            decode::<Response>(&encode(&response).unwrap()).unwrap(),
            response
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = encode(&Response::Ok).unwrap();
        bytes[0] = 2;
        let error = decode::<Response>(&bytes).unwrap_err();
        assert!(matches!(error, EnvelopeError::UnknownVersion(2)), "{error}");
        assert!(error.to_string().contains("version 2"));
        assert!(matches!(
            open(&[9, 1, 2]),
            Err(EnvelopeError::UnknownVersion(9))
        ));
    }

    #[test]
    fn empty_garbage_and_oversized_are_refused() {
        assert!(matches!(decode::<Request>(&[]), Err(EnvelopeError::Empty)));
        assert!(matches!(
            decode::<Request>(&[VERSION, 200, 200, 200]),
            Err(EnvelopeError::Codec(_))
        ));
        let big = Request::Hint {
            partitions: vec![u32::MAX; MAX_MESSAGE_BYTES],
        };
        assert!(matches!(encode(&big), Err(EnvelopeError::TooLarge(_))));
        let huge = vec![VERSION; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<Request>(&huge),
            Err(EnvelopeError::TooLarge(_))
        ));
    }

    #[test]
    fn seal_and_open_are_inverse() {
        let sealed = seal(b"foca");
        assert_eq!(open(&sealed).unwrap(), b"foca");
    }
}
