//! The S3 blob store (any S3-compatible endpoint; path-style addressing for MinIO and the
//! like), through object_store.
//!
//! `put` returns once the PUT is acknowledged, which is S3's durability point. Keys fan out
//! like the filesystem store's (`ab/cd/<key>`). At start the store writes and reads back a
//! probe object, so a missing bucket, bad credentials or an unreachable endpoint stop the start
//! with a clear error; readiness checks read the probe again.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::blob::{BlobError, BlobStore, is_valid_key};
use crate::config::StorageOptions;

/// Key of the object written at start and read by health checks.
const PROBE: &str = "mairust/probe";

/// Bodies in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    bucket: String,
}

fn backend(e: object_store::Error) -> BlobError {
    BlobError::Backend(e.to_string())
}

fn path_of(key: &str) -> Result<Path, BlobError> {
    if !is_valid_key(key) {
        return Err(BlobError::InvalidKey(key.to_string()));
    }
    Ok(Path::from(format!("{}/{}/{key}", &key[0..2], &key[2..4])))
}

impl S3BlobStore {
    /// Builds the client from `storage.options` (no I/O yet).
    pub fn new(options: &StorageOptions) -> Result<Self, BlobError> {
        let bucket = options
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                BlobError::Config(
                    "storage.options.bucket (S3_BUCKET) is required for the s3 backend".into(),
                )
            })?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(options.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(key), Some(secret)) = (&options.access_key, &options.secret_key) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| BlobError::Config(format!("invalid S3 settings: {e}")))?;
        Ok(Self {
            store: Arc::new(store),
            bucket,
        })
    }

    /// Lists the bucket, then writes and reads back the probe object: proves the endpoint
    /// answers, the credentials work and the bucket exists.
    pub async fn verify(&self) -> Result<(), BlobError> {
        // Listing first: some S3-compatible servers create a missing bucket on PUT instead of
        // answering NoSuchBucket, which would hide a typo in the bucket name.
        if let Err(listing) = self
            .store
            .list_with_delimiter(Some(&Path::from("mairust")))
            .await
        {
            // object_store keeps a failed listing's HTTP status to itself (it is `Generic`),
            // but an object request on the same bucket answers with a typed one: ask it why.
            let typed = match listing {
                object_store::Error::Generic { .. } if !transport_failed(&listing) => {
                    self.store.head(&Path::from(PROBE)).await.err()
                }
                _ => None,
            };
            return Err(self.explain(typed.as_ref().unwrap_or(&listing), &listing));
        }
        let probe = Path::from(PROBE);
        self.store
            .put(&probe, PutPayload::from_static(b"mairust"))
            .await
            .map_err(|e| self.explain(&e, &e))?;
        self.store
            .head(&probe)
            .await
            .map_err(|e| self.explain(&e, &e))?;
        Ok(())
    }

    /// Says what to fix, from the kind of `cause` (its variant, which object_store derives
    /// from the HTTP status, or the transport failure under it), with `detail`'s text.
    fn explain(&self, cause: &object_store::Error, detail: &object_store::Error) -> BlobError {
        use object_store::Error as E;
        let hint = match cause {
            E::NotFound { .. } => {
                format!("bucket `{}` does not exist; create it first", self.bucket)
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                "access denied: check S3_ACCESS_KEY and S3_SECRET_KEY".to_string()
            }
            _ if transport_failed(cause) => {
                "the S3 endpoint is unreachable: check S3_ENDPOINT".to_string()
            }
            _ => "S3 request failed".to_string(),
        };
        BlobError::Backend(format!("{hint} ({detail})"))
    }
}

/// Whether the request never got an answer: the connection was refused or timed out, the
/// name did not resolve, as object_store's HTTP client (or the socket error under it) types
/// it somewhere in the source chain.
fn transport_failed(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    use std::io::ErrorKind;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(http) = c.downcast_ref::<HttpError>()
            && matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout)
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::TimedOut
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[async_trait::async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, data: &[u8]) -> Result<(), BlobError> {
        self.store
            .put(&path_of(key)?, PutPayload::from(data.to_vec()))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        match self.store.get(&path_of(key)?).await {
            Ok(result) => Ok(result.bytes().await.map_err(backend)?.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(key.to_string())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        match self.store.head(&path_of(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&path_of(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn health(&self) -> Result<(), BlobError> {
        self.store
            .head(&Path::from(PROBE))
            .await
            .map(|_| ())
            .map_err(|e| self.explain(&e, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fan_out_and_are_validated() {
        let key = crate::store::blob_key(b"x");
        assert_eq!(
            path_of(&key).expect("valid").as_ref(),
            format!("{}/{}/{key}", &key[..2], &key[2..4])
        );
        assert!(path_of("../x").is_err());
    }

    #[test]
    fn a_bucket_is_required() {
        let err = S3BlobStore::new(&StorageOptions::default()).expect_err("no bucket");
        assert!(err.to_string().contains("S3_BUCKET"), "{err}");
    }

    /// Object requests carry their status as a typed error, whatever the message says.
    #[test]
    fn typed_errors_are_explained_without_their_text() {
        crate::net::tls::install_crypto_provider();
        let store = S3BlobStore::new(&StorageOptions {
            bucket: Some("mail".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..StorageOptions::default()
        })
        .expect("client");
        let explain = |e: object_store::Error| store.explain(&e, &e).to_string();
        let denied = explain(object_store::Error::Unauthenticated {
            path: PROBE.into(),
            source: "refused".into(),
        });
        assert!(denied.contains(": access denied"), "{denied}");
        let missing = explain(object_store::Error::NotFound {
            path: PROBE.into(),
            source: "gone".into(),
        });
        assert!(
            missing.contains(": bucket `mail` does not exist"),
            "{missing}"
        );
        let refused = explain(object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        });
        assert!(
            refused.contains(": the S3 endpoint is unreachable"),
            "{refused}"
        );
        // The text is shown, never read: a message that merely mentions 403 is no denial.
        let other = explain(object_store::Error::Generic {
            store: "S3",
            source: "odd answer mentioning 403 AccessDenied".into(),
        });
        assert!(other.contains(": S3 request failed"), "{other}");
    }
}
