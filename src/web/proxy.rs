//! `/api` proxied to the API at `web.api_url`: method, path, query, headers (minus the
//! hop-by-hop ones) and body go up; status, headers and body come back, streamed both ways so
//! that large messages never sit whole in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;

use crate::api::error::ApiError;
use crate::config::Config;
use crate::events::{self, WebProxyRequestCompleted};

/// How long opening a connection to the API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `web.api_url` is not set.
    #[error(
        "the web role needs the API's URL: set web.api_url (environment API_URL), such as http://api:8080"
    )]
    NoUrl,
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client for web.api_url: {0}")]
    Client(#[source] reqwest::Error),
}

/// A request body grew past the proxy's cap while it streamed.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
struct BodyTooLarge(usize);

/// The proxy to the upstream API; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// `web.api_url` without a trailing slash; the request's path is appended.
    base: String,
    /// Longest wait for the response headers.
    timeout: Duration,
    /// Largest request body passed on to `/api/v1/send`, as the API computes it.
    send_cap: usize,
    /// Largest request body passed on to any other route (`api.max_body_bytes`).
    body_cap: usize,
}

impl Proxy {
    /// The proxy for `web.api_url`.
    pub fn new(config: &Config) -> Result<Self, ProxyError> {
        let url = config.web.api_url.as_deref().ok_or(ProxyError::NoUrl)?;
        let base = url.trim().trim_end_matches('/').to_string();
        let timeout = config.web.proxy_timeout;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Between two reads of a streamed body; a slow but moving download goes on.
            .read_timeout(timeout)
            // Redirects and cookies are the browser's business: passed back, never followed.
            .redirect(reqwest::redirect::Policy::none())
            // The API is a service next door, never reached through an outbound HTTP proxy.
            .no_proxy()
            .build()
            .map_err(ProxyError::Client)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base,
                timeout,
                send_cap: crate::api::send::body_limit(config),
                body_cap: config.api.max_body_bytes,
            }),
        })
    }

    /// The upstream's base URL, as configured.
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// Whether the upstream answers `GET /health/live` with 200 within `timeout`.
    pub async fn check_upstream(&self, timeout: Duration) -> Result<(), String> {
        let url = format!("{}/health/live", self.inner.base);
        let request = self.inner.client.get(&url).timeout(timeout).send();
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
            Ok(Err(e)) => Err(root_cause(&e)),
            Ok(Ok(response)) if response.status() == StatusCode::OK => Ok(()),
            Ok(Ok(response)) => Err(format!("{url} answered {}", response.status())),
        }
    }

    /// Forwards one request and returns the upstream's answer, or the API's JSON error shape
    /// when there is none (502 unreachable, 504 no answer in time, 413 body over the cap).
    async fn forward(&self, peer: SocketAddr, request: Request) -> Result<Response, ApiError> {
        let inner = &self.inner;
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // The API's own limits, per route, applied here: the API answers a body over its
        // limit with 413 before reading it and closes, and a client of the proxy would then
        // see the broken upload (502) instead of that answer.
        let cap = if parts.uri.path() == "/api/v1/send" {
            inner.send_cap
        } else {
            inner.body_cap
        };
        if declared.is_some_and(|len| len > cap as u64) {
            return Err(too_large(cap));
        }
        let has_body = declared.is_some_and(|len| len > 0)
            || parts.headers.contains_key(header::TRANSFER_ENCODING);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("{}{path}", inner.base);
        let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
            .map_err(|_| ApiError::bad_request("unsupported HTTP method"))?;
        let headers = upstream_headers(&parts.headers, peer);
        let mut upstream = inner.client.request(method, &url).headers(headers);
        if has_body {
            let mut seen = 0usize;
            let stream = body.into_data_stream().map(
                move |chunk| -> Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>> {
                    let chunk = chunk?;
                    seen = seen.saturating_add(chunk.len());
                    if seen > cap {
                        return Err(Box::new(BodyTooLarge(cap)));
                    }
                    Ok(chunk)
                },
            );
            upstream = upstream.body(reqwest::Body::wrap_stream(stream));
        }
        let response = match tokio::time::timeout(inner.timeout, upstream.send()).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(e)) => return Err(self.failed(&e, cap)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let mut headers = HeaderMap::with_capacity(response.headers().len());
        let hop = connection_tokens(response.headers());
        for (name, value) in response.headers() {
            if !is_hop_by_hop(name, &hop) {
                headers.append(name.clone(), value.clone());
            }
        }
        let body = axum::body::Body::from_stream(response.bytes_stream());
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    fn timed_out(&self) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            format!(
                "the API at {} (web.api_url) did not answer within {}s (web.proxy_timeout); \
                 check that it is running and not overloaded",
                self.inner.base,
                self.inner.timeout.as_secs()
            ),
        )
    }

    fn failed(&self, e: &reqwest::Error, cap: usize) -> ApiError {
        if source_is::<BodyTooLarge>(e) {
            return too_large(cap);
        }
        let cause = root_cause(e);
        tracing::warn!(api_url = %self.inner.base, error = %cause, "proxied API request failed");
        if e.is_timeout() {
            return self.timed_out();
        }
        let message = if e.is_connect() {
            format!(
                "cannot reach the API at {} (web.api_url): {cause}; check that it is running \
                 and that this host can reach it",
                self.inner.base
            )
        } else {
            format!(
                "the API at {} (web.api_url) broke off the exchange: {cause}",
                self.inner.base
            )
        };
        ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
    }
}

fn too_large(cap: usize) -> ApiError {
    ApiError::too_large(format!(
        "request body larger than {cap} bytes, the most the API accepts here (api.max_body_bytes; \
         for /api/v1/send, 4/3 of smtp.max_message_size plus that)"
    ))
}

/// Whether an error of type `T` is somewhere in `e`'s chain of sources.
fn source_is<T: std::error::Error + 'static>(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<T>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The innermost cause, which is the one that says what happened ("connection refused");
/// an I/O error is given by its kind, without the OS error number.
fn root_cause(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    match last.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() != std::io::ErrorKind::Other => io.kind().to_string(),
        _ => last.to_string(),
    }
}

/// The header names a `Connection` header lists: hop-by-hop for this message too.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Headers meant for one connection only (RFC 9110 §7.6.1), which a proxy must not pass on.
fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
        || listed.iter().any(|t| t == name)
}

/// The client's headers for the upstream: end-to-end ones as they are (Authorization,
/// Cookie, Content-Type, Content-Length...), `Host` replaced by the upstream's, and the
/// `X-Forwarded-*` headers that tell the API who asked: the client address appended to
/// `X-Forwarded-For`; `X-Forwarded-Proto` and `X-Forwarded-Host` kept when a proxy in front
/// set them, else this hop's.
fn upstream_headers(incoming: &HeaderMap, peer: SocketAddr) -> reqwest::header::HeaderMap {
    let hop = connection_tokens(incoming);
    let mut out = reqwest::header::HeaderMap::with_capacity(incoming.len() + 3);
    for (name, value) in incoming {
        if is_hop_by_hop(name, &hop) || name == header::HOST {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let forwarded_for = HeaderName::from_static("x-forwarded-for");
    let client = peer.ip().to_string();
    let chain = incoming
        .get_all(&forwarded_for)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .chain(std::iter::once(client.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    out.remove(&forwarded_for);
    if let Ok(value) = HeaderValue::from_str(&chain) {
        out.insert(forwarded_for, value);
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !out.contains_key(&proto) {
        out.insert(proto, HeaderValue::from_static("http"));
    }
    let host = HeaderName::from_static("x-forwarded-host");
    if !out.contains_key(&host)
        && let Some(value) = incoming.get(header::HOST)
    {
        out.insert(host, value.clone());
    }
    out
}

/// The `/api` routes that forward to `proxy`, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>(proxy: Proxy) -> Router<S> {
    Router::new()
        .route("/api", any(handle))
        .route("/api/{*rest}", any(handle))
        .layer(Extension(proxy))
}

async fn handle(
    Extension(proxy): Extension<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let response = proxy
        .forward(peer, request)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    events::emit(WebProxyRequestCompleted {
        status: response.status().as_u16(),
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("x-private", "1"),
            ("host", "mail.example.test"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("content-type", "application/json"),
            ("x-forwarded-for", "203.0.113.7"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let out = upstream_headers(&h, "192.0.2.1:4000".parse().expect("addr"));
        for gone in [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "x-private",
            "host",
        ] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["authorization"], "Bearer t");
        assert_eq!(out["cookie"], "a=b");
        assert_eq!(out["content-type"], "application/json");
        assert_eq!(out["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "mail.example.test");
    }
}
