//! Cuts the client's byte stream into whole IMAP commands: a command is a line, or lines
//! joined by literals (`{N}` or the non-synchronising `{N+}` of LITERAL+, RFC 7888). Without
//! I/O: the driver pushes what it read and sends the continuation request this asks for.

/// The longest line (outside literals) a client may send.
pub const MAX_LINE: usize = 64 * 1024;

/// What the framer found in the bytes pushed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole command, its final CRLF included.
    Command(Vec<u8>),
    /// A synchronising literal was announced: send a continuation request (`+ ...`), then
    /// the client sends its bytes.
    Continue,
}

/// Input the framer refuses; the connection cannot recover its framing after it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A line longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A non-synchronising literal larger than the limit: its bytes are already coming.
    #[error("literal of {size} bytes is larger than the limit of {limit}")]
    LiteralTooLarge {
        /// Announced size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// A synchronising literal over the limit: the line is dropped and the command refused
/// (the client sends nothing more for it).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// The command's tag (empty if the line has none).
    pub tag: String,
    /// Announced size.
    pub size: u64,
}

/// Accumulates input and yields whole commands.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Literal bytes still expected before the next line.
    literal_left: usize,
    /// The largest literal accepted.
    max_literal: u64,
}

/// One step of [`Framer::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A frame.
    Frame(Frame),
    /// A command whose synchronising literal was too large; it is gone from the input.
    Refused(Refused),
    /// More input is needed.
    More,
}

impl Framer {
    /// A framer accepting literals of up to `max_literal` bytes.
    pub fn new(max_literal: u64) -> Self {
        Self {
            buf: Vec::new(),
            line_start: 0,
            literal_left: 0,
            max_literal,
        }
    }

    /// Appends bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drops everything not yet framed (after STARTTLS: nothing sent in the clear counts).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.line_start = 0;
        self.literal_left = 0;
    }

    /// The next plain line (for IDLE's `DONE` and AUTHENTICATE's responses), without its
    /// CRLF; only between commands.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        debug_assert_eq!((self.line_start, self.literal_left), (0, 0));
        match memchr::memmem::find(&self.buf, b"\r\n") {
            Some(end) => {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err(FramingError::LineTooLong),
            None => Ok(None),
        }
    }

    /// The next frame, if the input holds one.
    pub fn next_frame(&mut self) -> Result<Next, FramingError> {
        loop {
            if self.literal_left > 0 {
                let available = self.buf.len() - self.line_start;
                if available < self.literal_left {
                    return Ok(Next::More);
                }
                self.line_start += self.literal_left;
                self.literal_left = 0;
            }
            let Some(end) = memchr::memmem::find(&self.buf[self.line_start..], b"\r\n") else {
                if self.buf.len() - self.line_start > MAX_LINE {
                    return Err(FramingError::LineTooLong);
                }
                return Ok(Next::More);
            };
            if end > MAX_LINE {
                return Err(FramingError::LineTooLong);
            }
            let line_end = self.line_start + end;
            let next_start = line_end + 2;
            match literal_at_end(&self.buf[self.line_start..line_end]) {
                Some((size, sync)) => {
                    if size > self.max_literal {
                        if !sync {
                            return Err(FramingError::LiteralTooLarge {
                                size,
                                limit: self.max_literal,
                            });
                        }
                        let tag = tag_of(&self.buf);
                        self.buf.drain(..next_start);
                        self.line_start = 0;
                        return Ok(Next::Refused(Refused { tag, size }));
                    }
                    // Fits in usize: it is at most max_literal, a size the server accepts.
                    self.literal_left = usize::try_from(size).unwrap_or(usize::MAX);
                    self.line_start = next_start;
                    if sync {
                        return Ok(Next::Frame(Frame::Continue));
                    }
                }
                None => {
                    let command: Vec<u8> = self.buf.drain(..next_start).collect();
                    self.line_start = 0;
                    return Ok(Next::Frame(Frame::Command(command)));
                }
            }
        }
    }
}

/// The size and mode (true: synchronising) of a literal announced at the end of `line`.
fn literal_at_end(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let spec = &inner[open + 1..];
    let (digits, sync) = match spec.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (spec, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits)
        .ok()?
        .parse()
        .ok()
        .map(|n| (n, sync))
}

/// The first word of the buffer: a command's tag.
fn tag_of(buf: &[u8]) -> String {
    let word = buf
        .split(|&b| b == b' ' || b == b'\r')
        .next()
        .unwrap_or_default();
    String::from_utf8_lossy(word).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(framer: &mut Framer) -> Vec<Next> {
        let mut out = Vec::new();
        loop {
            match framer.next_frame().expect("framing") {
                Next::More => return out,
                other => out.push(other),
            }
        }
    }

    #[test]
    fn lines_and_literals_make_commands() {
        let mut f = Framer::new(100);
        f.push(b"a1 NOOP\r\na2 LOGIN {5}\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Next::Frame(Frame::Command(b"a1 NOOP\r\n".to_vec())),
                Next::Frame(Frame::Continue)
            ]
        );
        f.push(b"alice {3+}\r\npw!\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Next::Frame(Frame::Command(
                b"a2 LOGIN {5}\r\nalice {3+}\r\npw!\r\n".to_vec()
            ))]
        );
    }

    #[test]
    fn a_literal_may_hold_crlf_and_braces() {
        let mut f = Framer::new(100);
        f.push(b"a APPEND x {6+}\r\n{1}\r\n\r\n\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Next::Frame(Frame::Command(
                b"a APPEND x {6+}\r\n{1}\r\n\r\n\r\n".to_vec()
            ))]
        );
    }

    #[test]
    fn oversized_literals_are_refused() {
        let mut f = Framer::new(10);
        f.push(b"t1 APPEND INBOX {11}\r\nt2 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Next::Refused(Refused {
                    tag: "t1".into(),
                    size: 11
                }),
                Next::Frame(Frame::Command(b"t2 NOOP\r\n".to_vec()))
            ]
        );
        f.push(b"t3 APPEND INBOX {11+}\r\n");
        assert_eq!(
            f.next_frame(),
            Err(FramingError::LiteralTooLarge {
                size: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn a_line_without_end_is_bounded() {
        let mut f = Framer::new(10);
        f.push(&vec![b'a'; MAX_LINE + 1]);
        assert_eq!(f.next_frame(), Err(FramingError::LineTooLong));
    }

    proptest! {
        /// However the input is split into reads, the same commands come out.
        #[test]
        fn splitting_the_input_never_changes_the_commands(cuts in proptest::collection::vec(0usize..80, 0..6)) {
            let input: &[u8] = b"a LOGIN {5+}\r\nalice pw\r\nb APPEND INBOX {7}\r\nx\r\ny\r\nz\r\nc NOOP\r\n";
            let mut whole = Framer::new(100);
            whole.push(input);
            let expected: Vec<Vec<u8>> = frames(&mut whole).into_iter().filter_map(|n| match n {
                Next::Frame(Frame::Command(c)) => Some(c),
                _ => None,
            }).collect();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            points.sort_unstable();
            let mut split = Framer::new(100);
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([input.len()]) {
                split.push(&input[last..p]);
                last = p;
                got.extend(frames(&mut split).into_iter().filter_map(|n| match n {
                    Next::Frame(Frame::Command(c)) => Some(c),
                    _ => None,
                }));
            }
            prop_assert_eq!(got, expected);
        }
    }
}
