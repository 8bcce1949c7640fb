//! SEARCH (RFC 9051 §6.4.4, with CONDSTORE's MODSEQ): whether one message matches the keys.
//! Without I/O: the driver loads a message's bytes only when a key needs them.

use imap_codec::imap_types::search::SearchKey;

use super::selected::Selected;
use crate::store::{FolderEntry, flags};

/// Whether a search uses MODSEQ.
pub(super) fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}

/// Whether a search key needs the message itself.
pub(super) fn needs_message(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_message),
        SearchKey::Not(k) => needs_message(k),
        SearchKey::Or(a, b) => needs_message(a) || needs_message(b),
        _ => false,
    }
}

/// One message tested against SEARCH keys.
pub(super) struct Candidate<'a> {
    /// The selected folder (for sequence sets).
    pub selected: &'a Selected,
    /// The message's index in it.
    pub index: usize,
    /// The message.
    pub entry: &'a FolderEntry,
    /// Its bytes, if a key needs them ([`needs_message`]).
    pub raw: Option<&'a [u8]>,
    /// The same, parsed.
    pub parsed: Option<&'a mail_parser::Message<'a>>,
}

fn contains_ci(haystack: &str, needle: &[u8]) -> bool {
    let needle = String::from_utf8_lossy(needle).to_lowercase();
    haystack.to_lowercase().contains(&needle)
}

impl Candidate<'_> {
    fn header(&self, name: &str) -> String {
        let Some(raw) = self.raw else {
            return String::new();
        };
        let Some(m) = self.parsed else {
            return String::new();
        };
        let mut values = Vec::new();
        for header in m.headers() {
            if header.name().eq_ignore_ascii_case(name) {
                let (start, end) = (header.offset_start() as usize, header.offset_end() as usize);
                if let Some(bytes) = raw.get(start..end) {
                    values.push(String::from_utf8_lossy(bytes).into_owned());
                }
                // Decoded text too, so encoded words match what the user sees.
                if let Some(text) = header.value().as_text() {
                    values.push(text.to_string());
                }
                if let mail_parser::HeaderValue::Address(a) = header.value() {
                    for addr in a.iter() {
                        values.push(format!(
                            "{} <{}>",
                            addr.name.as_deref().unwrap_or_default(),
                            addr.address.as_deref().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        values.join("\n")
    }

    fn sent_date(&self) -> Option<chrono::NaiveDate> {
        let date = self.parsed?.date()?;
        chrono::DateTime::from_timestamp(date.to_timestamp(), 0).map(|d| d.date_naive())
    }

    fn internal_date(&self) -> chrono::NaiveDate {
        chrono::DateTime::from_timestamp_millis(self.entry.received_at)
            .unwrap_or_default()
            .date_naive()
    }

    fn text(&self) -> String {
        let Some(m) = self.parsed else {
            return String::new();
        };
        let mut text = String::new();
        for i in 0..m.text_body_count() {
            if let Some(t) = m.body_text(i) {
                text.push_str(&t);
                text.push('\n');
            }
        }
        for i in 0..m.html_body_count() {
            if let Some(t) = m.body_html(i) {
                text.push_str(&t);
                text.push('\n');
            }
        }
        text
    }

    /// Whether the message matches `key`.
    pub(super) fn matches(&self, key: &SearchKey<'_>) -> bool {
        let f = self.entry.flags;
        let size = crate::message::delivered_size(&self.entry.envelope_from, self.entry.size);
        match key {
            SearchKey::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            SearchKey::Or(a, b) => self.matches(a) || self.matches(b),
            SearchKey::Not(k) => !self.matches(k),
            SearchKey::All => true,
            SearchKey::SequenceSet(set) => self
                .selected
                .resolve(set, false)
                .binary_search(&self.index)
                .is_ok(),
            SearchKey::Uid(set) => self
                .selected
                .resolve(set, true)
                .binary_search(&self.index)
                .is_ok(),
            SearchKey::Answered => f & flags::ANSWERED != 0,
            SearchKey::Unanswered => f & flags::ANSWERED == 0,
            SearchKey::Deleted => f & flags::DELETED != 0,
            SearchKey::Undeleted => f & flags::DELETED == 0,
            SearchKey::Draft => f & flags::DRAFT != 0,
            SearchKey::Undraft => f & flags::DRAFT == 0,
            SearchKey::Flagged => f & flags::FLAGGED != 0,
            SearchKey::Unflagged => f & flags::FLAGGED == 0,
            SearchKey::Seen | SearchKey::Old => {
                f & flags::SEEN != 0 || matches!(key, SearchKey::Old)
            }
            SearchKey::Unseen => f & flags::SEEN == 0,
            SearchKey::New | SearchKey::Recent => false,
            SearchKey::Keyword(_) => false,
            SearchKey::Unkeyword(_) => true,
            SearchKey::Larger(n) => size > i64::from(*n),
            SearchKey::Smaller(n) => size < i64::from(*n),
            SearchKey::Before(d) => self.internal_date() < *d.as_ref(),
            SearchKey::On(d) => self.internal_date() == *d.as_ref(),
            SearchKey::Since(d) => self.internal_date() >= *d.as_ref(),
            SearchKey::SentBefore(d) => self.sent_date().is_some_and(|s| s < *d.as_ref()),
            SearchKey::SentOn(d) => self.sent_date().is_some_and(|s| s == *d.as_ref()),
            SearchKey::SentSince(d) => self.sent_date().is_some_and(|s| s >= *d.as_ref()),
            SearchKey::From(s) => contains_ci(&self.header("From"), s.as_ref()),
            SearchKey::To(s) => contains_ci(&self.header("To"), s.as_ref()),
            SearchKey::Cc(s) => contains_ci(&self.header("Cc"), s.as_ref()),
            SearchKey::Bcc(s) => contains_ci(&self.header("Bcc"), s.as_ref()),
            SearchKey::Subject(s) => contains_ci(&self.header("Subject"), s.as_ref()),
            SearchKey::Header(name, s) => {
                let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                let value = self.header(&name);
                self.parsed.is_some_and(|m| {
                    m.headers()
                        .iter()
                        .any(|h| h.name().eq_ignore_ascii_case(&name))
                }) && contains_ci(&value, s.as_ref())
            }
            SearchKey::Body(s) => contains_ci(&self.text(), s.as_ref()),
            SearchKey::ModSequence { modseq, .. } => {
                self.entry.modseq >= i64::try_from(*modseq).unwrap_or(i64::MAX)
            }
            SearchKey::Text(s) => {
                let header_end = self
                    .parsed
                    .and_then(|m| m.part(0))
                    .map_or(0, |p| p.raw_body_offset() as usize);
                let header = self
                    .raw
                    .and_then(|r| r.get(..header_end))
                    .map(|h| String::from_utf8_lossy(h).into_owned())
                    .unwrap_or_default();
                contains_ci(&header, s.as_ref()) || contains_ci(&self.text(), s.as_ref())
            }
        }
    }
}

/// What a SEARCH with `RETURN (...)` asks for (ESEARCH, RFC 4731).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Returns {
    /// MIN: the lowest number found.
    pub min: bool,
    /// MAX: the highest.
    pub max: bool,
    /// ALL: every one, as a sequence set.
    pub all: bool,
    /// COUNT: how many.
    pub count: bool,
}

/// Splits `RETURN (...)` off a `[UID] SEARCH` command (imap-codec does not parse it): the
/// command without it, and what it asks to return. `None` if there is no RETURN, or it asks
/// for something not offered (SAVE).
pub fn split_return(command: &[u8]) -> Option<(Vec<u8>, Returns)> {
    fn word<'a>(rest: &'a [u8], expected: &[u8]) -> Option<&'a [u8]> {
        let head = rest.get(..expected.len())?;
        head.eq_ignore_ascii_case(expected)
            .then(|| &rest[expected.len()..])
    }
    let tag_end = command.iter().position(|&b| b == b' ')?;
    let mut rest = &command[tag_end + 1..];
    if let Some(after) = word(rest, b"UID ") {
        rest = after;
    }
    rest = word(rest, b"SEARCH ")?;
    let prefix = command.len() - rest.len();
    let options = word(rest, b"RETURN (")?;
    let close = options.iter().position(|&b| b == b')')?;
    let after = options.get(close + 1..)?.strip_prefix(b" ")?;
    let mut returns = Returns::default();
    for option in options[..close]
        .split(|&b| b == b' ')
        .filter(|o| !o.is_empty())
    {
        match option.to_ascii_uppercase().as_slice() {
            b"MIN" => returns.min = true,
            b"MAX" => returns.max = true,
            b"ALL" => returns.all = true,
            b"COUNT" => returns.count = true,
            _ => return None,
        }
    }
    // RETURN () is RETURN (ALL).
    if returns == Returns::default() {
        returns.all = true;
    }
    let mut rewritten = command[..prefix].to_vec();
    rewritten.extend_from_slice(after);
    Some((rewritten, returns))
}

/// The ESEARCH response to `tag` for the numbers found (ascending), with the highest modseq
/// of the messages found when the search used MODSEQ.
pub fn esearch_response(
    tag: &str,
    uid: bool,
    returns: &Returns,
    found: &[i64],
    modseq: Option<i64>,
) -> String {
    let mut line = format!("ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    if let (Some(first), Some(last)) = (found.first(), found.last()) {
        if returns.min {
            line.push_str(&format!(" MIN {first}"));
        }
        if returns.max {
            line.push_str(&format!(" MAX {last}"));
        }
    }
    if returns.count {
        line.push_str(&format!(" COUNT {}", found.len()));
    }
    if returns.all && !found.is_empty() {
        line.push_str(&format!(" ALL {}", super::selected::uid_set(found)));
    }
    if let Some(modseq) = modseq.filter(|_| !found.is_empty()) {
        line.push_str(&format!(" MODSEQ {modseq}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_options_are_split_off() {
        let (rest, returns) =
            split_return(b"a1 UID SEARCH RETURN (MIN COUNT) UNSEEN\r\n").expect("esearch");
        assert_eq!(rest, b"a1 UID SEARCH UNSEEN\r\n");
        assert_eq!(
            returns,
            Returns {
                min: true,
                count: true,
                ..Returns::default()
            }
        );
        let (_, all) = split_return(b"a2 search return () ALL\r\n").expect("empty");
        assert!(all.all);
        assert_eq!(split_return(b"a3 SEARCH UNSEEN\r\n"), None);
        assert_eq!(split_return(b"a4 SEARCH RETURN (SAVE) ALL\r\n"), None);
    }

    #[test]
    fn esearch_responses() {
        let all = Returns {
            min: true,
            max: true,
            all: true,
            count: true,
        };
        assert_eq!(
            esearch_response("t", true, &all, &[2, 3, 4, 9], None),
            "ESEARCH (TAG \"t\") UID MIN 2 MAX 9 COUNT 4 ALL 2:4,9"
        );
        assert_eq!(
            esearch_response("t", false, &all, &[], Some(5)),
            "ESEARCH (TAG \"t\") COUNT 0"
        );
    }
}
