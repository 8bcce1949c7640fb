//! The selected mailbox as one client sees it: messages by sequence number, and what to tell
//! the client when the folder changed under it (EXPUNGE, FETCH FLAGS, EXISTS). Without I/O.

use std::collections::BTreeSet;

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::store::{FolderContents, FolderEntry, FolderState, flags};

/// The system flags in the order IMAP lists them, with their bits.
pub const SYSTEM_FLAGS: [(&str, i64); 5] = [
    ("\\Answered", flags::ANSWERED),
    ("\\Flagged", flags::FLAGGED),
    ("\\Deleted", flags::DELETED),
    ("\\Seen", flags::SEEN),
    ("\\Draft", flags::DRAFT),
];

/// `bits` as an IMAP flag list, e.g. `(\Seen \Flagged)`.
pub fn flag_list(bits: i64) -> String {
    let names: Vec<&str> = SYSTEM_FLAGS
        .iter()
        .filter(|(_, bit)| bits & bit != 0)
        .map(|(name, _)| *name)
        .collect();
    format!("({})", names.join(" "))
}

/// What the client enabled that changes how changes are reported (RFC 7162).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reporting {
    /// CONDSTORE: FETCH responses carry the message's MODSEQ.
    pub modseq: bool,
    /// QRESYNC: expunges are reported as `VANISHED` UID sets instead of EXPUNGE.
    pub vanished: bool,
}

/// The untagged FETCH that tells a client a message's flags (and modseq).
pub fn flags_response(seq: usize, entry: &FolderEntry, reporting: Reporting) -> String {
    let mut line = format!(
        "* {seq} FETCH (UID {} FLAGS {}",
        entry.uid,
        flag_list(entry.flags)
    );
    if reporting.modseq {
        line.push_str(&format!(" MODSEQ ({})", entry.modseq));
    }
    line.push_str(")\r\n");
    line
}

/// UIDs as a sequence set, runs joined (`3:5,9`).
pub fn uid_set(uids: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            uids[i].to_string()
        } else {
            format!("{}:{}", uids[i], uids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// A selected folder.
#[derive(Debug)]
pub struct Selected {
    /// Its name as stored.
    pub name: String,
    /// EXAMINE: nothing may change through this session.
    pub read_only: bool,
    /// Its state when last read.
    pub state: FolderState,
    /// Its messages by sequence number (index + 1), ascending UIDs.
    pub entries: Vec<FolderEntry>,
}

impl Selected {
    /// The view of `contents`.
    pub fn new(name: String, read_only: bool, contents: FolderContents) -> Self {
        Self {
            name,
            read_only,
            state: contents.state,
            entries: contents.entries,
        }
    }

    /// The indexes (sequence number − 1) a sequence set names, ascending; UIDs with `uid`.
    /// Numbers that name no message are left out.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        let Some(last) = self.entries.last() else {
            return Vec::new();
        };
        let largest = if uid {
            u32::try_from(last.uid).unwrap_or(u32::MAX)
        } else {
            u32::try_from(self.entries.len()).unwrap_or(u32::MAX)
        };
        let value = |v: &SeqOrUid| match v {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => largest,
        };
        let mut out = BTreeSet::new();
        for sequence in set.0.as_ref() {
            let (a, b) = match sequence {
                Sequence::Single(v) => (value(v), value(v)),
                Sequence::Range(a, b) => (value(a), value(b)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if uid {
                let start = self.entries.partition_point(|e| e.uid < i64::from(lo));
                let end = self.entries.partition_point(|e| e.uid <= i64::from(hi));
                out.extend(start..end);
            } else {
                let hi = (hi as usize).min(self.entries.len());
                out.extend((lo as usize).saturating_sub(1)..hi);
            }
        }
        out.into_iter().collect()
    }

    /// The first message without `\Seen`, as a sequence number.
    pub fn first_unseen(&self) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.flags & flags::SEEN == 0)
            .map(|i| i + 1)
    }

    /// Takes the folder's new contents and returns the untagged responses that bring the
    /// client's view up to date: EXPUNGE (highest first, so no number shifts under the
    /// client), FETCH for changed flags, EXISTS for new mail.
    pub fn refresh(&mut self, contents: FolderContents, reporting: Reporting) -> Vec<u8> {
        let mut out = Vec::new();
        let new = contents.entries;
        let kept: BTreeSet<i64> = new.iter().map(|e| e.uid).collect();
        let mut vanished = Vec::new();
        for index in (0..self.entries.len()).rev() {
            if !kept.contains(&self.entries[index].uid) {
                if reporting.vanished {
                    vanished.push(self.entries[index].uid);
                } else {
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", index + 1).as_bytes());
                }
                self.entries.remove(index);
            }
        }
        if !vanished.is_empty() {
            vanished.reverse();
            out.extend_from_slice(format!("* VANISHED {}\r\n", uid_set(&vanished)).as_bytes());
        }
        let old_last = self.entries.last().map_or(0, |e| e.uid);
        let mut at = 0;
        for entry in &new {
            if entry.uid > old_last {
                break;
            }
            while at < self.entries.len() && self.entries[at].uid < entry.uid {
                at += 1;
            }
            if let Some(known) = self.entries.get_mut(at)
                && known.uid == entry.uid
            {
                if known.flags != entry.flags {
                    out.extend_from_slice(flags_response(at + 1, entry, reporting).as_bytes());
                }
                *known = entry.clone();
            }
        }
        let before = self.entries.len();
        self.entries
            .extend(new.into_iter().filter(|e| e.uid > old_last));
        if self.entries.len() != before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", self.entries.len()).as_bytes());
        }
        self.state = contents.state;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn entry(uid: i64, flags: i64) -> FolderEntry {
        FolderEntry {
            id: uid * 10,
            uid,
            flags,
            modseq: 1,
            size: 10,
            received_at: 0,
            blob_key: String::new(),
            envelope_from: String::new(),
        }
    }

    fn contents(entries: Vec<FolderEntry>) -> FolderContents {
        FolderContents {
            state: FolderState {
                uidvalidity: 1,
                uidnext: entries.last().map_or(1, |e| e.uid + 1),
                highestmodseq: 1,
            },
            entries,
        }
    }

    fn set(ranges: &[(u32, Option<u32>)]) -> SequenceSet {
        let v = |n: u32| SeqOrUid::Value(NonZeroU32::new(n).expect("non-zero"));
        let list: Vec<Sequence> = ranges
            .iter()
            .map(|&(a, b)| match b {
                Some(0) => Sequence::Range(v(a), SeqOrUid::Asterisk),
                Some(b) => Sequence::Range(v(a), v(b)),
                None => Sequence::Single(v(a)),
            })
            .collect();
        SequenceSet(list.try_into().expect("one at least"))
    }

    #[test]
    fn sequence_numbers_and_uids_resolve_to_messages() {
        let view = Selected::new(
            "INBOX".into(),
            false,
            contents(vec![entry(3, 0), entry(7, 0), entry(9, 0)]),
        );
        assert_eq!(view.resolve(&set(&[(2, Some(0))]), false), vec![1, 2]);
        assert_eq!(view.resolve(&set(&[(4, Some(8))]), true), vec![1]);
        // A UID range ending in * always includes the last message.
        assert_eq!(view.resolve(&set(&[(100, Some(0))]), true), vec![2]);
        assert_eq!(view.resolve(&set(&[(5, None)]), false), Vec::<usize>::new());
    }

    #[test]
    fn a_refresh_reports_expunges_flag_changes_and_new_mail() {
        let mut view = Selected::new(
            "INBOX".into(),
            false,
            contents(vec![entry(1, 0), entry(2, 0), entry(3, 0), entry(4, 0)]),
        );
        let out = view.refresh(
            contents(vec![entry(1, 0), entry(3, flags::SEEN), entry(5, 0)]),
            Reporting::default(),
        );
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "* 4 EXPUNGE\r\n* 2 EXPUNGE\r\n* 2 FETCH (UID 3 FLAGS (\\Seen))\r\n* 3 EXISTS\r\n"
        );
        assert_eq!(
            view.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert!(
            view.refresh(contents(view.entries.clone()), Reporting::default())
                .is_empty()
        );
        let reporting = Reporting {
            modseq: true,
            vanished: true,
        };
        let out = view.refresh(contents(vec![entry(5, flags::FLAGGED)]), reporting);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "* VANISHED 1,3\r\n* 1 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (1))\r\n"
        );
    }
}
