//! The data items of one FETCH response (RFC 9051 §7.5.2) for a message of the selected
//! folder. Without I/O: the driver passes the message's bytes when an item needs them.

use imap_codec::imap_types::fetch::{MessageDataItemName, Part, Section};

use super::render::{self, SectionSpec};
use super::selected::flag_list;
use crate::store::FolderEntry;

fn imap_date(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string()
}

fn section_spec<'a>(
    section: &'a Option<Section<'_>>,
    path: &'a mut Vec<u32>,
    names: &'a mut Vec<String>,
) -> SectionSpec<'a> {
    let part = |p: &Part, path: &mut Vec<u32>| {
        path.extend(p.0.as_ref().iter().map(|n| n.get()));
    };
    match section {
        None => SectionSpec::Whole,
        Some(Section::Part(p)) => {
            part(p, path);
            SectionSpec::Part(path)
        }
        Some(Section::Header(p)) => {
            let has = p.as_ref().map(|p| part(p, path)).is_some();
            SectionSpec::Header(has.then_some(path.as_slice()))
        }
        Some(Section::Text(p)) => {
            let has = p.as_ref().map(|p| part(p, path)).is_some();
            SectionSpec::Text(has.then_some(path.as_slice()))
        }
        Some(Section::Mime(p)) => {
            part(p, path);
            SectionSpec::Mime(path)
        }
        Some(Section::HeaderFields(p, fields)) | Some(Section::HeaderFieldsNot(p, fields)) => {
            let not = matches!(section, Some(Section::HeaderFieldsNot(..)));
            let has = p.as_ref().map(|p| part(p, path)).is_some();
            names.extend(
                fields
                    .as_ref()
                    .iter()
                    .map(|f| String::from_utf8_lossy(f.as_ref()).into_owned()),
            );
            SectionSpec::HeaderFields(has.then_some(path.as_slice()), names, not)
        }
    }
}

/// The section's name as FETCH echoes it, e.g. `1.HEADER.FIELDS (SUBJECT)`.
fn section_label(section: &Option<Section<'_>>) -> String {
    let part = |p: &Part| {
        p.0.as_ref()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(".")
    };
    let prefixed = |p: &Option<Part>, what: &str| match p {
        Some(p) => format!("{}.{what}", part(p)),
        None => what.to_string(),
    };
    match section {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => prefixed(p, "HEADER"),
        Some(Section::Text(p)) => prefixed(p, "TEXT"),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
        Some(Section::HeaderFields(p, f)) | Some(Section::HeaderFieldsNot(p, f)) => {
            let kind = if matches!(section, Some(Section::HeaderFieldsNot(..))) {
                "HEADER.FIELDS.NOT"
            } else {
                "HEADER.FIELDS"
            };
            let names: Vec<String> = f
                .as_ref()
                .iter()
                .map(|n| String::from_utf8_lossy(n.as_ref()).to_ascii_uppercase())
                .collect();
            format!("{} ({})", prefixed(p, kind), names.join(" "))
        }
    }
}

/// Appends one FETCH data item of `entry` (`raw` and `parsed`: its bytes, when the item
/// needs them).
pub(super) fn fetch_item(
    out: &mut Vec<u8>,
    name: &MessageDataItemName<'_>,
    entry: &FolderEntry,
    raw: Option<&[u8]>,
    parsed: Option<&mail_parser::Message<'_>>,
) {
    let raw = raw.unwrap_or_default();
    let header_end = parsed
        .and_then(|m| m.part(0))
        .map_or(raw.len(), |p| p.raw_body_offset() as usize);
    match name {
        MessageDataItemName::Uid => out.extend_from_slice(format!("UID {}", entry.uid).as_bytes()),
        MessageDataItemName::Flags => {
            out.extend_from_slice(format!("FLAGS {}", flag_list(entry.flags)).as_bytes());
        }
        MessageDataItemName::InternalDate => out.extend_from_slice(
            format!("INTERNALDATE \"{}\"", imap_date(entry.received_at)).as_bytes(),
        ),
        MessageDataItemName::Rfc822Size => out.extend_from_slice(
            format!(
                "RFC822.SIZE {}",
                crate::message::delivered_size(&entry.envelope_from, entry.size)
            )
            .as_bytes(),
        ),
        MessageDataItemName::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            match parsed {
                Some(m) => render::envelope(out, m),
                None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
            }
        }
        MessageDataItemName::BodyStructure | MessageDataItemName::Body => {
            let extended = matches!(name, MessageDataItemName::BodyStructure);
            out.extend_from_slice(if extended {
                b"BODYSTRUCTURE "
            } else {
                b"BODY "
            });
            match parsed {
                Some(m) => render::body_structure(out, m, extended),
                None => out.extend_from_slice(
                    format!("(\"text\" \"plain\" NIL NIL NIL \"7bit\" {} 0)", raw.len()).as_bytes(),
                ),
            }
        }
        MessageDataItemName::Rfc822 => {
            out.extend_from_slice(b"RFC822 ");
            render::literal(out, raw);
        }
        MessageDataItemName::Rfc822Header => {
            out.extend_from_slice(b"RFC822.HEADER ");
            render::literal(out, &raw[..header_end.min(raw.len())]);
        }
        MessageDataItemName::Rfc822Text => {
            out.extend_from_slice(b"RFC822.TEXT ");
            render::literal(out, &raw[header_end.min(raw.len())..]);
        }
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            let (mut path, mut names) = (Vec::new(), Vec::new());
            let spec = section_spec(section, &mut path, &mut names);
            let bytes = parsed
                .and_then(|m| render::section(m, &spec))
                .or_else(|| matches!(spec, SectionSpec::Whole).then(|| raw.to_vec()))
                .unwrap_or_default();
            let label = section_label(section);
            match partial {
                Some((offset, length)) => {
                    let start = (*offset as usize).min(bytes.len());
                    let end = start.saturating_add(length.get() as usize).min(bytes.len());
                    out.extend_from_slice(format!("BODY[{label}]<{offset}> ").as_bytes());
                    render::literal(out, &bytes[start..end]);
                }
                None => {
                    out.extend_from_slice(format!("BODY[{label}] ").as_bytes());
                    render::literal(out, &bytes);
                }
            }
        }
        MessageDataItemName::ModSeq => {
            out.extend_from_slice(format!("MODSEQ ({})", entry.modseq).as_bytes());
        }
        // Refused before any response (see `fetch`).
        MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {}
    }
}
