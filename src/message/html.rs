//! Sanitizing a message's HTML body for display (ammonia).
//!
//! The output has no scripts, event handlers, styles, forms, frames or plugins, and no
//! `javascript:`/`vbscript:`/`data:` URLs except `data:image/...` in an `<img>`. Links open in
//! a new window without a referrer. Remote images are dropped unless the reader allows them
//! (a remote image tells the sender that, when and from where the mail was read), and `cid:`
//! images point at the attachment that carries that Content-ID.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The sanitized HTML and what was taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanitized {
    /// The HTML fragment, safe to show in a sandboxed frame.
    pub html: String,
    /// How many remote image references were dropped.
    pub remote_images_blocked: usize,
}

/// Attributes whose value is a URL the browser fetches or follows.
const URL_ATTRIBUTES: &[&str] = &[
    "href",
    "src",
    "cite",
    "action",
    "formaction",
    "longdesc",
    "background",
    "poster",
    "data",
    "codebase",
    "xlink:href",
];

/// The URL as a browser reads it: without tabs and newlines anywhere, and without leading or
/// trailing control characters and spaces (the URL standard's pre-processing), so that
/// `java\tscript:` is recognised as `javascript:`.
fn normalized(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect::<String>()
        .trim_matches(|c: char| c <= ' ')
        .to_string()
}

/// The URL's scheme in lower case, or `None` for a relative URL.
fn scheme_of(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// Percent-decodes `s` (Content-IDs in `cid:` URLs may be escaped, RFC 2392).
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(text, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sanitizes `html`. `images` maps a Content-ID (without angle brackets) to the URL that
/// serves that part; `allow_remote` keeps `http:`/`https:` images.
pub fn sanitize(html: &str, images: HashMap<String, String>, allow_remote: bool) -> Sanitized {
    let blocked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&blocked);
    let mut builder = ammonia::Builder::default();
    builder
        // `cid:` and `data:` pass ammonia's scheme check only to reach the filter below,
        // which keeps them on images alone.
        .add_url_schemes(["cid", "data"])
        .link_rel(Some("noopener noreferrer"))
        .set_tag_attribute_value("a", "target", "_blank")
        .attribute_filter(move |element, attribute, value| {
            if !URL_ATTRIBUTES.contains(&attribute) {
                return Some(Cow::Borrowed(value));
            }
            let url = normalized(value);
            let scheme = scheme_of(&url);
            let image = element == "img" && attribute == "src";
            match scheme.as_deref() {
                Some("data") => {
                    let media = url["data:".len()..].trim_start().to_ascii_lowercase();
                    (image && media.starts_with("image/")).then_some(Cow::Owned(url))
                }
                Some("cid") => {
                    let id = &url["cid:".len()..];
                    let target = images
                        .get(id)
                        .or_else(|| images.get(&percent_decoded(id)))
                        .filter(|_| image)?;
                    Some(Cow::Owned(target.clone()))
                }
                Some("http" | "https") if image => {
                    if allow_remote {
                        Some(Cow::Owned(url))
                    } else {
                        counter.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
                // An image without a scheme would load from this server, or from another
                // host when protocol-relative (`//host/x.png`); neither is the mail's.
                None if image => {
                    if url.starts_with("//") || url.starts_with("\\\\") || url.starts_with("/\\") {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                }
                _ => Some(Cow::Borrowed(value)),
            }
        });
    let html = builder.clean(html).to_string();
    Sanitized {
        html,
        remote_images_blocked: blocked.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(html: &str) -> Sanitized {
        let images = HashMap::from([("logo@x".to_string(), "/att/0".to_string())]);
        sanitize(html, images, false)
    }

    #[test]
    fn scripts_handlers_and_dangerous_urls_go() {
        let out = clean(
            r#"<p onclick="x()">hi<script>alert(1)</script></p><a href="java&#9;script:alert(1)">a</a>
            <a href="vbscript:x">b</a><a href="data:text/html,<script>x</script>">c</a>
            <form><input></form><iframe src="https://e.test"></iframe><object data="x"></object>
            <embed src="x"><style>p{}</style><p style="background:url(https://e.test/t)">s</p>"#,
        );
        let lower = out.html.to_ascii_lowercase();
        for bad in [
            "script", "onclick", "vbscript", "data:", "<form", "<input", "<iframe", "<object",
            "<embed", "<style", "style=", "e.test",
        ] {
            assert!(!lower.contains(bad), "{bad} in {}", out.html);
        }
        assert!(out.html.contains("hi"), "{}", out.html);
    }

    #[test]
    fn links_open_a_new_window_without_referrer() {
        let out = clean(r#"<a href="https://e.test/x">x</a>"#);
        assert!(
            out.html.contains(r#"href="https://e.test/x""#),
            "{}",
            out.html
        );
        assert!(
            out.html.contains(r#"rel="noopener noreferrer""#),
            "{}",
            out.html
        );
        assert!(out.html.contains(r#"target="_blank""#), "{}", out.html);
    }

    #[test]
    fn images_remote_blocked_cid_mapped_data_kept() {
        let html = r#"<img src="https://e.test/a.png"><img src="//e.test/b.png">
            <img src="cid:logo@x"><img src="cid:logo%40x"><img src="cid:unknown">
            <img src="data:image/png;base64,AAAA"><img src="/api/v1/tokens">
            <img srcset="https://e.test/c.png 2x"><table background="https://e.test/d.png">
            <tr><td background="https://e.test/e.png">t</td></tr></table>"#;
        let out = clean(html);
        assert_eq!(out.remote_images_blocked, 2, "{}", out.html);
        assert!(!out.html.contains("e.test"), "{}", out.html);
        assert_eq!(
            out.html.matches(r#"src="/att/0""#).count(),
            2,
            "{}",
            out.html
        );
        assert!(!out.html.contains("cid:"), "{}", out.html);
        assert!(!out.html.contains("tokens"), "{}", out.html);
        assert!(
            out.html.contains("data:image/png;base64,AAAA"),
            "{}",
            out.html
        );

        let allowed = sanitize(html, HashMap::new(), true);
        assert_eq!(allowed.remote_images_blocked, 1, "{}", allowed.html);
        assert!(
            allowed.html.contains(r#"src="https://e.test/a.png""#),
            "{}",
            allowed.html
        );
    }
}
