//! SMTP replies, as the server session writes them and as the client session parses them.

use std::fmt::{self, Write as _};

/// An SMTP reply: code, optional enhanced status code and text.
///
/// The server session builds replies and writes their wire form ([`Display`](fmt::Display),
/// [`write_to`](Self::write_to)); the client session parses them from a server (for a 4xx or 5xx
/// the lines joined with spaces, else the first line) or makes them up for local failures, and
/// reports them on one line with [`summary`](Self::summary).
///
/// Rendered as `550 5.1.1 text\r\n`; a text with several lines (separated by `\n`) becomes a
/// multi-line reply (`250-...` lines then `250 ...`), the status repeated on each line. Control
/// and non-ASCII characters in the text are rendered as `?`, and a code outside 200..=599 as
/// `451`, so the output is always well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code (class, subject, detail), e.g. `(5, 1, 1)`.
    pub status: Option<(u8, u16, u16)>,
    /// The human-readable text; `\n` separates the lines of a multi-line reply.
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code: `Reply::new(550, (5, 1, 1), "No such user")`.
    #[must_use]
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Self {
        Self {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, 354, 334).
    #[must_use]
    pub fn without_status(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            status: None,
            text: text.into(),
        }
    }

    /// The code is 2xx.
    #[must_use]
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The code is 4xx or 5xx.
    #[must_use]
    pub fn is_negative(&self) -> bool {
        (400..600).contains(&self.code)
    }

    /// Appends the wire form (one or more CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }

    /// The wire form as bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// One line without CRLF, for logs and delivery reports: `550 5.1.1 text`, the status and
    /// the text left out when absent. Unlike the wire form, the text is shown as it is.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut out = self.code.to_string();
        if let Some((class, subject, detail)) = self.status {
            let _ = write!(out, " {class}.{subject}.{detail}");
        }
        if !self.text.is_empty() {
            out.push(' ');
            out.push_str(&self.text);
        }
        out
    }
}

impl fmt::Display for Reply {
    /// Writes the wire form, CRLFs included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = if (200..600).contains(&self.code) {
            self.code
        } else {
            451
        };
        let mut lines: Vec<&str> = self.text.lines().collect();
        if lines.is_empty() {
            lines.push("");
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            write!(f, "{code}{sep}")?;
            if let Some((class, subject, detail)) = self.status {
                write!(f, "{class}.{subject}.{detail}")?;
                if !line.is_empty() {
                    f.write_str(" ")?;
                }
            }
            for ch in line.chars() {
                let printable = ch == ' ' || ch.is_ascii_graphic();
                f.write_char(if printable { ch } else { '?' })?;
            }
            f.write_str("\r\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_one_line_with_the_parts_present() {
        assert_eq!(
            Reply::new(550, (5, 1, 1), "No such user").summary(),
            "550 5.1.1 No such user"
        );
        assert_eq!(Reply::without_status(250, "").summary(), "250");
        assert_eq!(Reply::new(250, (2, 0, 0), "").summary(), "250 2.0.0");
        assert_eq!(
            Reply::without_status(421, "bye now").summary(),
            "421 bye now"
        );
    }
}
