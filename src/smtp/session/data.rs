//! Message reception: DATA (dot-unstuffing, the end of data, the bare CR/LF rule against SMTP
//! smuggling) and BDAT chunks, with the size limit.

use super::commands::number_overflows;
use super::{Envelope, Event, Pending, Reply, ServerSession, State, Transaction};

/// One BDAT chunk being read.
#[derive(Debug)]
pub(super) struct BdatChunk {
    size: usize,
    remaining: usize,
    last: bool,
    /// The chunk is out of sequence: read its octets, drop them, then send this reply.
    refusal: Option<Refusal>,
}

#[derive(Debug)]
struct Refusal {
    reply: Reply,
    counts_as_error: bool,
}

/// Where the DATA body parser stands. CR and LF are only special as the pair CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataPos {
    /// Right after a CRLF (or the DATA line's CRLF).
    LineStart,
    /// Inside a line.
    Mid,
    /// After a CR held back until we know whether LF follows.
    Cr,
    /// After a `.` at the start of a line (dropped: stuffing or the end marker).
    Dot,
    /// After `.` CR at the start of a line: LF ends the message.
    DotCr,
}

#[derive(Debug)]
pub(super) struct DataParser {
    pos: DataPos,
    /// A bare CR or bare LF was seen.
    bare: bool,
}

/// Finds a bare CR or bare LF in BDAT octets, across chunk boundaries (a chunk may end
/// between the CR and the LF of one line break).
#[derive(Debug, Default)]
pub(super) struct LineBreakCheck {
    /// The octets so far end in a CR.
    after_cr: bool,
    /// A bare CR or LF was seen.
    bare: bool,
}

impl LineBreakCheck {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !self.bare && !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] != b'\n' {
                    self.bare = true;
                    break;
                }
                bytes = &bytes[1..];
                continue;
            }
            let Some(at) = memchr::memchr2(b'\r', b'\n', bytes) else {
                break;
            };
            if bytes[at] == b'\n' {
                self.bare = true;
            } else {
                self.after_cr = true;
            }
            bytes = &bytes[at + 1..];
        }
    }

    /// The octets seen hold a bare CR or LF (a CR at the very end counts once it is the end).
    fn found_bare(&self) -> bool {
        self.bare || self.after_cr
    }
}

/// Where DATA/BDAT octets go: into the body up to the size limit, then nowhere.
struct Sink<'a> {
    body: &'a mut Vec<u8>,
    oversize: &'a mut bool,
    limit: usize,
}

impl Sink<'_> {
    fn push(&mut self, bytes: &[u8]) {
        if *self.oversize || bytes.is_empty() {
            return;
        }
        if self.body.len().saturating_add(bytes.len()) > self.limit {
            *self.oversize = true;
            *self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }
}

/// The length of the run at the start of `input` (inside a line) that goes into the body as
/// it is: line content, and line ends CRLF whose next line starts with neither `.` nor CR nor
/// LF. Returns the position of the CR or LF that ends the run, or `None` when the whole input
/// is such a run. Most of a body is one run, copied in one piece instead of line by line.
fn plain_run(input: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + memchr::memchr2(b'\r', b'\n', &input[from..])?;
        let ordinary_line_follows = input[at] == b'\r'
            && input.get(at + 1) == Some(&b'\n')
            && input
                .get(at + 2)
                .is_some_and(|b| !matches!(b, b'.' | b'\r' | b'\n'));
        if !ordinary_line_follows {
            return Some(at);
        }
        from = at + 2;
    }
}

impl DataParser {
    fn new() -> Self {
        Self {
            pos: DataPos::LineStart,
            bare: false,
        }
    }

    /// Consumes body bytes from `input`. Returns how many were consumed and whether the end of
    /// data (CRLF `.` CRLF) was reached; bytes after the end are left alone.
    fn feed(&mut self, input: &[u8], sink: &mut Sink<'_>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            match self.pos {
                DataPos::Mid => {
                    let rest = &input[i..];
                    match plain_run(rest) {
                        None => {
                            sink.push(rest);
                            i = input.len();
                        }
                        Some(k) => {
                            sink.push(&rest[..k]);
                            if rest[k] == b'\r' {
                                self.pos = DataPos::Cr;
                            } else {
                                self.bare = true;
                                sink.push(b"\n");
                            }
                            i += k + 1;
                        }
                    }
                }
                DataPos::LineStart => {
                    i += 1;
                    match byte {
                        b'.' => self.pos = DataPos::Dot,
                        b'\r' => self.pos = DataPos::Cr,
                        b'\n' => {
                            self.bare = true;
                            sink.push(b"\n");
                            self.pos = DataPos::Mid;
                        }
                        _ => {
                            sink.push(&[byte]);
                            self.pos = DataPos::Mid;
                        }
                    }
                }
                DataPos::Cr => {
                    if byte == b'\n' {
                        i += 1;
                        sink.push(b"\r\n");
                        self.pos = DataPos::LineStart;
                    } else {
                        // The held CR was bare; look at `byte` again inside the line.
                        self.bare = true;
                        sink.push(b"\r");
                        self.pos = DataPos::Mid;
                    }
                }
                DataPos::Dot => {
                    if byte == b'\r' {
                        i += 1;
                        self.pos = DataPos::DotCr;
                    } else {
                        // The dot was stuffing; `byte` is line content.
                        self.pos = DataPos::Mid;
                    }
                }
                DataPos::DotCr => {
                    if byte == b'\n' {
                        return (i + 1, true);
                    }
                    self.bare = true;
                    sink.push(b"\r");
                    self.pos = DataPos::Mid;
                }
            }
        }
        (i, false)
    }
}

impl ServerSession {
    pub(super) fn step_data(&mut self) -> bool {
        let State::Data(parser) = &mut self.state else {
            return false;
        };
        let buf = &self.input[self.consumed..];
        if buf.is_empty() {
            return false;
        }
        let mut sink = Sink {
            body: &mut self.tx.body,
            oversize: &mut self.tx.oversize,
            limit: self.config.max_message_size,
        };
        let (used, ended) = parser.feed(buf, &mut sink);
        let bare = parser.bare;
        self.consumed += used;
        if ended {
            self.state = State::Command;
            self.finish_message(bare);
        }
        true
    }

    pub(super) fn step_bdat(&mut self) -> bool {
        let State::Bdat(chunk) = &mut self.state else {
            return false;
        };
        let buf = &self.input[self.consumed..];
        let take = chunk.remaining.min(buf.len());
        if take == 0 && chunk.remaining > 0 {
            return false;
        }
        if chunk.refusal.is_none() {
            self.tx.bdat_line_breaks.feed(&buf[..take]);
            let mut sink = Sink {
                body: &mut self.tx.body,
                oversize: &mut self.tx.oversize,
                limit: self.config.max_message_size,
            };
            sink.push(&buf[..take]);
        }
        self.consumed += take;
        chunk.remaining -= take;
        if chunk.remaining == 0
            && let State::Bdat(chunk) = std::mem::replace(&mut self.state, State::Command)
        {
            self.finish_chunk(chunk);
        }
        true
    }

    pub(super) fn cmd_data(&mut self) {
        if self.tx.mail_from.is_none() {
            return self.error(Reply::new(503, (5, 5, 1), "Need MAIL command"));
        }
        if self.tx.bdat {
            return self.error(Reply::new(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        if self.tx.rcpt_to.is_empty() {
            return self.send(&Reply::new(554, (5, 5, 1), "No valid recipients"));
        }
        self.tx.body = Vec::new();
        self.tx.oversize = false;
        self.state = State::Data(DataParser::new());
        self.send(&Reply::without_status(
            354,
            "End data with <CR><LF>.<CR><LF>",
        ));
    }

    pub(super) fn cmd_bdat(&mut self, size: usize, last: bool, raw: &[u8]) {
        if bdat_size_overflows(raw) {
            // smtp-proto misreads such a number as a small one: never read that many octets.
            return self.error(Reply::new(501, (5, 5, 4), "BDAT chunk size too large"));
        }
        // The chunk's octets are always read, even when the command is refused: otherwise
        // they would be taken for commands.
        let refusal = if !self.esmtp {
            Some(Refusal {
                reply: Reply::new(503, (5, 5, 1), "BDAT requires EHLO"),
                counts_as_error: true,
            })
        } else if self.tx.mail_from.is_none() {
            Some(Refusal {
                reply: Reply::new(503, (5, 5, 1), "Need MAIL command"),
                counts_as_error: true,
            })
        } else if self.tx.rcpt_to.is_empty() {
            Some(Refusal {
                reply: Reply::new(554, (5, 5, 1), "No valid recipients"),
                counts_as_error: false,
            })
        } else {
            if !self.tx.bdat {
                self.tx.bdat = true;
                self.tx.body = Vec::new();
                self.tx.oversize = false;
                self.tx.bdat_line_breaks = LineBreakCheck::default();
            }
            None
        };
        self.state = State::Bdat(BdatChunk {
            size,
            remaining: size,
            last,
            refusal,
        });
    }

    fn finish_chunk(&mut self, chunk: BdatChunk) {
        if let Some(refusal) = chunk.refusal {
            if chunk.last {
                self.tx = Transaction::default();
            }
            if refusal.counts_as_error {
                self.error(refusal.reply);
            } else {
                self.send(&refusal.reply);
            }
        } else if !chunk.last {
            self.send(&Reply::new(
                250,
                (2, 0, 0),
                format!("{} octets received", chunk.size),
            ));
        } else {
            let bare = self.tx.bdat_line_breaks.found_bare();
            self.finish_message(bare);
        }
    }

    /// The end of a message (DATA's end marker or BDAT LAST): refused if it held a bare CR or
    /// LF or went over the size limit, otherwise handed to the application.
    ///
    /// BDAT follows DATA's rule although its octets are counted: a bare CR or LF would be
    /// read as a line break by some readers and not others (a header a check never saw), and
    /// without BINARYMIME, which MaiRust does not offer, the content must be CRLF text anyway
    /// (RFC 3030 §3).
    fn finish_message(&mut self, bare: bool) {
        let tx = std::mem::take(&mut self.tx);
        if bare {
            self.send(&Reply::new(
                550,
                (5, 6, 11),
                "Message rejected: bare CR or LF in message data; use CRLF line endings",
            ));
        } else if tx.oversize {
            self.send(&size_exceeded());
        } else {
            self.deliver(tx);
        }
    }

    fn deliver(&mut self, tx: Transaction) {
        let envelope = Envelope {
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            mail_from: tx.mail_from.unwrap_or_default(),
            rcpt_to: tx.rcpt_to,
            body_8bit: tx.body_8bit,
            smtputf8: tx.smtputf8,
            authenticated: self.auth_user.clone(),
            tls: self.tls,
        };
        self.emit(
            Event::Message {
                envelope,
                data: tx.body,
            },
            Pending::Message,
        );
    }
}

fn size_exceeded() -> Reply {
    Reply::new(
        552,
        (5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

/// The argument of a `BDAT` line is a run of digits too large for a `usize`.
fn bdat_size_overflows(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let mut words = text.split_ascii_whitespace();
    words.next();
    words.next().is_some_and(number_overflows)
}
