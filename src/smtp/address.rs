//! Mailbox addresses in their RFC 5321 form.
//!
//! smtp-proto hands over a quoted local part unquoted (`"a>b"@x.test` as `a>b@x.test`).
//! Written back like that, in `Return-Path:`, in the SMTP client's `MAIL FROM`/`RCPT TO` or
//! as a bounce's recipient, it is another address or no address at all. [`wire_form`] puts
//! the quotes back where the local part is not a dot-atom.

use std::borrow::Cow;

/// `atext` of RFC 5322 §3.2.3, with UTF-8 allowed (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// A non-empty run of atext separated by single dots.
fn is_dot_atom(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// `address` (`local@domain`, the local part unquoted) as SMTP writes it: the local part
/// quoted, with `"` and `\` escaped, unless it is a dot-atom. The null sender, `postmaster`
/// and addresses whose local part needs no quotes are returned as they are.
pub fn wire_form(address: &str) -> Cow<'_, str> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Cow::Borrowed(address);
    };
    if is_dot_atom(local) {
        return Cow::Borrowed(address);
    }
    let mut quoted = String::with_capacity(address.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted.push('@');
    quoted.push_str(domain);
    Cow::Owned(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_that_are_no_dot_atom_are_quoted() {
        assert_eq!(wire_form("alice@x.test"), "alice@x.test");
        assert_eq!(wire_form("a.b+tag@x.test"), "a.b+tag@x.test");
        assert_eq!(wire_form("jörg@x.test"), "jörg@x.test");
        assert_eq!(wire_form(""), "");
        assert_eq!(wire_form("postmaster"), "postmaster");
        assert_eq!(wire_form("a>b@attacker.test"), "\"a>b\"@attacker.test");
        assert_eq!(wire_form("a b@x.test"), "\"a b\"@x.test");
        assert_eq!(wire_form("a..b@x.test"), "\"a..b\"@x.test");
        assert_eq!(wire_form(".a@x.test"), "\".a\"@x.test");
        assert_eq!(wire_form("a\"b\\c@x.test"), "\"a\\\"b\\\\c\"@x.test");
        assert_eq!(wire_form("a@b@x.test"), "\"a@b\"@x.test");
        assert!(matches!(wire_form("plain@x.test"), Cow::Borrowed(_)));
    }
}
