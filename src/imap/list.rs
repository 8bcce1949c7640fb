//! LIST with the extensions of RFC 5258 (LIST-EXTENDED: selection and return options, several
//! patterns), RFC 5819 (LIST-STATUS) and RFC 6154 (SPECIAL-USE): the parsing imap-codec does
//! not do, and which folders a LIST answers with which attributes. Without I/O.

use crate::store::{Folder, INBOX};

/// A STATUS data item, in LIST's RETURN (STATUS ...) or a STATUS command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// MESSAGES.
    Messages,
    /// RECENT (always 0: no session gets `\Recent`).
    Recent,
    /// UIDNEXT.
    UidNext,
    /// UIDVALIDITY.
    UidValidity,
    /// UNSEEN.
    Unseen,
    /// HIGHESTMODSEQ (RFC 7162).
    HighestModSeq,
    /// SIZE (RFC 8438).
    Size,
}

impl StatusItem {
    fn parse(word: &[u8]) -> Option<Self> {
        let upper = word.to_ascii_uppercase();
        Some(match upper.as_slice() {
            b"MESSAGES" => Self::Messages,
            b"RECENT" => Self::Recent,
            b"UIDNEXT" => Self::UidNext,
            b"UIDVALIDITY" => Self::UidValidity,
            b"UNSEEN" => Self::Unseen,
            b"HIGHESTMODSEQ" => Self::HighestModSeq,
            b"SIZE" => Self::Size,
            _ => return None,
        })
    }

    /// Its name in a STATUS response.
    pub fn name(self) -> &'static str {
        match self {
            Self::Messages => "MESSAGES",
            Self::Recent => "RECENT",
            Self::UidNext => "UIDNEXT",
            Self::UidValidity => "UIDVALIDITY",
            Self::Unseen => "UNSEEN",
            Self::HighestModSeq => "HIGHESTMODSEQ",
            Self::Size => "SIZE",
        }
    }
}

/// A LIST (or LSUB) as the client asked it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// The reference name (a prefix for the patterns).
    pub reference: String,
    /// The mailbox patterns (modified UTF-7 as sent).
    pub patterns: Vec<String>,
    /// Selection SUBSCRIBED (or LSUB): subscribed folders only, marked `\Subscribed`.
    pub subscribed_only: bool,
    /// Selection SPECIAL-USE: folders with a special use only.
    pub special_use_only: bool,
    /// RETURN (SUBSCRIBED): mark subscribed folders.
    pub return_subscribed: bool,
    /// RETURN (STATUS (...)): a STATUS response after each folder.
    pub status: Vec<StatusItem>,
    /// Whether any LIST-EXTENDED syntax was used (then `\Subscribed` is reported, RFC 5258).
    pub extended: bool,
}

/// One token of a command line: a parenthesis or a string (atom, quoted or literal).
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Text(Vec<u8>),
}

/// Splits a whole command (literals included, as the framer delivers it) into tokens.
fn tokens(command: &[u8]) -> Option<Vec<Token>> {
    let line = command.strip_suffix(b"\r\n")?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let mut text = Vec::new();
                i += 1;
                loop {
                    match *line.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            text.push(*line.get(i + 1)?);
                            i += 2;
                        }
                        b => {
                            text.push(b);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Text(text));
                i += 1;
            }
            b'{' => {
                let close = i + line[i..].iter().position(|&b| b == b'}')?;
                let spec = &line[i + 1..close];
                let digits = spec.strip_suffix(b"+").unwrap_or(spec);
                let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
                let start = close + 3;
                if line.get(close + 1..start)? != b"\r\n" {
                    return None;
                }
                out.push(Token::Text(line.get(start..start + n)?.to_vec()));
                i = start + n;
            }
            _ => {
                let end = line[i..]
                    .iter()
                    .position(|&b| b == b' ' || b == b'(' || b == b')')
                    .map_or(line.len(), |p| i + p);
                out.push(Token::Text(line[i..end].to_vec()));
                i = end;
            }
        }
    }
    Some(out)
}

fn is(token: Option<&Token>, word: &[u8]) -> bool {
    matches!(token, Some(Token::Text(t)) if t.eq_ignore_ascii_case(word))
}

/// Parses a LIST command in any of its forms (RFC 3501, RFC 5258, RFC 5819); `None` if it
/// is not a well-formed LIST. Returns the tag and the request.
pub fn parse(command: &[u8]) -> Option<(String, ListRequest)> {
    let tokens = tokens(command)?;
    let mut it = tokens.iter().peekable();
    let Some(Token::Text(tag)) = it.next() else {
        return None;
    };
    if !is(it.next(), b"LIST") {
        return None;
    }
    let mut request = ListRequest::default();
    if it.peek() == Some(&&Token::Open) {
        it.next();
        request.extended = true;
        loop {
            match it.next()? {
                Token::Close => break,
                Token::Text(option) => match option.to_ascii_uppercase().as_slice() {
                    b"SUBSCRIBED" => request.subscribed_only = true,
                    b"SPECIAL-USE" => request.special_use_only = true,
                    // Other selection options change nothing here: no remote mailboxes, and
                    // RECURSIVEMATCH only refines SUBSCRIBED for parents we never hide.
                    b"REMOTE" | b"RECURSIVEMATCH" => {}
                    _ => return None,
                },
                Token::Open => return None,
            }
        }
    }
    let Some(Token::Text(reference)) = it.next() else {
        return None;
    };
    request.reference = String::from_utf8_lossy(reference).into_owned();
    match it.next()? {
        Token::Text(pattern) => request
            .patterns
            .push(String::from_utf8_lossy(pattern).into_owned()),
        Token::Open => {
            request.extended = true;
            loop {
                match it.next()? {
                    Token::Close => break,
                    Token::Text(pattern) => request
                        .patterns
                        .push(String::from_utf8_lossy(pattern).into_owned()),
                    Token::Open => return None,
                }
            }
        }
        Token::Close => return None,
    }
    if is(it.peek().copied(), b"RETURN") {
        it.next();
        request.extended = true;
        if it.next()? != &Token::Open {
            return None;
        }
        loop {
            match it.next()? {
                Token::Close => break,
                Token::Text(option) => match option.to_ascii_uppercase().as_slice() {
                    b"SUBSCRIBED" => request.return_subscribed = true,
                    // Always returned anyway.
                    b"CHILDREN" | b"SPECIAL-USE" => {}
                    b"STATUS" => {
                        if it.next()? != &Token::Open {
                            return None;
                        }
                        loop {
                            match it.next()? {
                                Token::Close => break,
                                Token::Text(item) => request.status.push(StatusItem::parse(item)?),
                                Token::Open => return None,
                            }
                        }
                    }
                    _ => return None,
                },
                Token::Open => return None,
            }
        }
    }
    if it.next().is_some() || request.patterns.is_empty() {
        return None;
    }
    Some((String::from_utf8_lossy(tag).into_owned(), request))
}

/// Whether `name` matches an IMAP LIST pattern: `*` matches anything, `%` anything but the
/// hierarchy delimiter; INBOX matches in any case.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('%', rest)) => (0..=n.len())
                .take_while(|&i| i == 0 || n[i - 1] != '/')
                .any(|i| go(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let normalise = |s: &str| -> Vec<char> {
        match s.get(..5) {
            Some(first)
                if first.eq_ignore_ascii_case(INBOX)
                    && (s.len() == 5 || s[5..].starts_with('/')) =>
            {
                format!("{INBOX}{}", &s[5..]).chars().collect()
            }
            _ => s.chars().collect(),
        }
    };
    go(&normalise(pattern), &normalise(name))
}

/// A folder a LIST answers with, and its attributes.
#[derive(Debug, PartialEq, Eq)]
pub struct Listed<'a> {
    /// The folder.
    pub folder: &'a Folder,
    /// Its name attributes (`\HasChildren`, `\Subscribed`, its special use, ...).
    pub attributes: Vec<&'a str>,
}

/// The folders `request` selects, in the store's order. `patterns` are the request's
/// patterns already decoded from modified UTF-7.
pub fn select<'a>(
    request: &ListRequest,
    patterns: &[String],
    folders: &'a [Folder],
) -> Vec<Listed<'a>> {
    let mut out = Vec::new();
    for folder in folders {
        if (request.subscribed_only && !folder.subscribed)
            || (request.special_use_only && folder.special_use.is_none())
        {
            continue;
        }
        let full: Vec<String> = patterns
            .iter()
            .map(|p| format!("{}{p}", request.reference))
            .collect();
        if !full.iter().any(|p| wildcard_match(p, &folder.name)) {
            continue;
        }
        let prefix = format!("{}/", folder.name);
        let children = folders.iter().any(|f| f.name.starts_with(&prefix));
        let mut attributes = vec![if children {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        }];
        // RFC 5258's attribute; LSUB (RFC 3501) has none such.
        if folder.subscribed
            && ((request.subscribed_only && request.extended) || request.return_subscribed)
        {
            attributes.push("\\Subscribed");
        }
        if let Some(special) = folder.special_use.as_deref() {
            attributes.push(special);
        }
        out.push(Listed { folder, attributes });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, special_use: Option<&str>, subscribed: bool) -> Folder {
        Folder {
            name: name.into(),
            special_use: special_use.map(String::from),
            subscribed,
            uidvalidity: 1,
            uidnext: 1,
            highestmodseq: 1,
            messages: 0,
            unseen: 0,
            size: 0,
        }
    }

    #[test]
    fn list_patterns() {
        assert!(wildcard_match("*", "INBOX"));
        assert!(wildcard_match("%", "Sent"));
        assert!(!wildcard_match("%", "Work/2026"));
        assert!(wildcard_match("Work/%", "Work/2026"));
        assert!(wildcard_match("inbox", "INBOX"));
        assert!(wildcard_match("W*6", "Work/2026"));
        assert!(!wildcard_match("Sent", "Sent Items"));
    }

    #[test]
    fn every_form_of_list_parses() {
        let (tag, basic) = parse(b"a1 LIST \"\" *\r\n").expect("basic");
        assert_eq!(
            (tag.as_str(), basic.patterns.as_slice(), basic.extended),
            ("a1", &["*".to_string()][..], false)
        );
        let (_, extended) = parse(
            b"a2 list (SUBSCRIBED special-use) \"\" (\"INBOX\" {4+}\r\nWork) RETURN (CHILDREN STATUS (MESSAGES UNSEEN HIGHESTMODSEQ))\r\n",
        )
        .expect("extended");
        assert_eq!(
            extended,
            ListRequest {
                reference: String::new(),
                patterns: vec!["INBOX".into(), "Work".into()],
                subscribed_only: true,
                special_use_only: true,
                return_subscribed: false,
                status: vec![
                    StatusItem::Messages,
                    StatusItem::Unseen,
                    StatusItem::HighestModSeq
                ],
                extended: true,
            }
        );
        for bad in [
            &b"a LIST \"\"\r\n"[..],
            b"a LIST (BOGUS) \"\" *\r\n",
            b"a LIST \"\" * RETURN (STATUS (WHATEVER))\r\n",
            b"a LIST \"\" * extra\r\n",
            b"a SELECT INBOX\r\n",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn selection_and_attributes() {
        let folders = vec![
            folder("INBOX", None, true),
            folder("Sent", Some("\\Sent"), true),
            folder("Work", None, false),
            folder("Work/2026", None, true),
        ];
        let names = |listed: Vec<Listed<'_>>| -> Vec<(String, Vec<String>)> {
            listed
                .into_iter()
                .map(|l| {
                    (
                        l.folder.name.clone(),
                        l.attributes.iter().map(|a| a.to_string()).collect(),
                    )
                })
                .collect()
        };
        let all = ListRequest {
            patterns: vec!["*".into()],
            return_subscribed: true,
            ..ListRequest::default()
        };
        assert_eq!(
            names(select(&all, &all.patterns, &folders)),
            vec![
                (
                    "INBOX".into(),
                    vec!["\\HasNoChildren".into(), "\\Subscribed".into()]
                ),
                (
                    "Sent".into(),
                    vec![
                        "\\HasNoChildren".into(),
                        "\\Subscribed".into(),
                        "\\Sent".into()
                    ]
                ),
                ("Work".into(), vec!["\\HasChildren".into()]),
                (
                    "Work/2026".into(),
                    vec!["\\HasNoChildren".into(), "\\Subscribed".into()]
                ),
            ]
        );
        let special = ListRequest {
            patterns: vec!["*".into()],
            special_use_only: true,
            ..ListRequest::default()
        };
        assert_eq!(select(&special, &special.patterns, &folders).len(), 1);
        let subscribed = ListRequest {
            patterns: vec!["Work*".into()],
            subscribed_only: true,
            ..ListRequest::default()
        };
        assert_eq!(
            names(select(&subscribed, &subscribed.patterns, &folders))[0].0,
            "Work/2026"
        );
    }
}
