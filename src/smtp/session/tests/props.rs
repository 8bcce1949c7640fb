//! Property tests: arbitrary input, splits, dot-stuffing, smuggling.

use super::*;
use proptest::prelude::*;

// ------------------------------------------------------------ properties

/// Runs a whole input through a fresh session in the given pieces and returns what came
/// out: the output bytes and the events.
fn run(config: SessionConfig, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
    let mut h = Harness::new(config);
    for piece in pieces {
        h.feed(piece);
    }
    (h.output, h.events)
}

fn auth_config() -> SessionConfig {
    SessionConfig {
        submission: true,
        allow_insecure_auth: true,
        max_message_size: 300,
        max_recipients: 3,
        max_errors: 50,
        ..config()
    }
}

/// Pieces of plausible SMTP traffic, to reach deep states more often than random bytes.
fn smtp_piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed = prop::sample::select(vec![
        "EHLO c\r\n",
        "HELO c\r\n",
        "MAIL FROM:<a@b.example>\r\n",
        "MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
        "MAIL FROM:<a@b.example> SIZE=99999\r\n",
        "RCPT TO:<c@d.example>\r\n",
        "RCPT TO:<postmaster>\r\n",
        "DATA\r\n",
        "BDAT 5\r\n",
        "BDAT 3 LAST\r\n",
        "BDAT 0 LAST\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
        "VRFY x\r\n",
        "STARTTLS\r\n",
        "AUTH PLAIN\r\n",
        "AUTH PLAIN AHUAcA==\r\n",
        "AUTH LOGIN\r\n",
        "dXNlcg==\r\n",
        "*\r\n",
        "\r\n.\r\n",
        ".\r\n",
        "..\r\n",
        "\r\n",
        "\n",
        "\r",
        ".",
        "hello world",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        6 => fixed,
        1 => prop::collection::vec(any::<u8>(), 0..20),
        1 => prop::collection::vec(prop::sample::select(b"\r\n. aQ".to_vec()), 0..20),
    ]
}

fn smtp_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(smtp_piece(), 0..40).prop_map(|pieces| pieces.concat())
}

fn split_at_points(data: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut last = 0;
    for cut in cuts {
        pieces.push(data[last..cut].to_vec());
        last = cut;
    }
    pieces.push(data[last..].to_vec());
    pieces
}

fn has_bare_cr_or_lf(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
            || (b == b'\r' && data.get(i + 1) != Some(&b'\n'))
    })
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics_and_output_is_well_formed(
        data in prop_oneof![smtp_stream(), prop::collection::vec(any::<u8>(), 0..400)],
        points in prop::collection::vec(any::<usize>(), 0..8),
        secure in any::<bool>(),
    ) {
        let cfg = if secure { auth_config() } else { config() };
        let pieces = split_at_points(&data, &points);
        let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (out, _) = run(cfg, &slices);
        assert_well_formed(&out);
    }

    #[test]
    fn splitting_the_input_does_not_change_the_dialogue(
        data in smtp_stream(),
        points in prop::collection::vec(any::<usize>(), 1..10),
    ) {
        // No STARTTLS offered: it discards what follows it in the same write by design.
        let cfg = SessionConfig { tls_available: false, ..auth_config() };
        let whole = run(cfg.clone(), &[&data]);
        let pieces = split_at_points(&data, &points);
        let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let split = run(cfg.clone(), &slices);
        prop_assert_eq!(&whole, &split);
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        let byte_by_byte = run(cfg, &bytes);
        prop_assert_eq!(&whole, &byte_by_byte);
    }

    #[test]
    fn dot_stuffing_round_trips(
        lines in prop::collection::vec("\\.{0,3}[a-z. ]{0,12}", 0..20),
        points in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let body: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
        let mut stream = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".to_vec();
        for line in &lines {
            if line.starts_with('.') {
                stream.push(b'.');
            }
            stream.extend_from_slice(line.as_bytes());
            stream.extend_from_slice(b"\r\n");
        }
        stream.extend_from_slice(b".\r\nQUIT\r\n");
        let pieces = split_at_points(&stream, &points);
        let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (out, events) = run(config(), &slices);
        let messages: Vec<&Vec<u8>> = events.iter().filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        }).collect();
        prop_assert_eq!(messages, vec![&body]);
        prop_assert!(out.ends_with(b"250 2.0.0 Message accepted\r\n221 2.0.0 Bye\r\n"));
    }

    #[test]
    fn data_with_bare_cr_or_lf_is_never_delivered(
        body in prop::collection::vec(prop::sample::select(b"\r\n.aQ".to_vec()), 0..60),
        points in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut stream = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".to_vec();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(b"\r\n.\r\n");
        let pieces = split_at_points(&stream, &points);
        let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (out, events) = run(config(), &slices);

        // The reference: the message is what lies between the DATA line's CRLF and the
        // first CRLF "." CRLF, the CRLF before the dot included.
        let mut virt = b"\r\n".to_vec();
        virt.extend_from_slice(&body);
        virt.extend_from_slice(b"\r\n.\r\n");
        let end = virt.windows(5).position(|w| w == b"\r\n.\r\n").expect("terminator");
        let region = &virt[2..end + 2];
        let messages: Vec<&Vec<u8>> = events.iter().filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        }).collect();
        for data in &messages {
            prop_assert!(!has_bare_cr_or_lf(data));
        }
        if has_bare_cr_or_lf(region) {
            prop_assert!(messages.is_empty());
            let text = String::from_utf8_lossy(&out);
            prop_assert!(text.contains("550 5.6.11 "));
        } else {
            let mut expected = Vec::new();
            for line in region.split_inclusive(|&b| b == b'\n') {
                expected.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            prop_assert_eq!(messages, vec![&expected]);
        }
    }

    #[test]
    fn bdat_with_bare_cr_or_lf_is_never_delivered(
        body in prop::collection::vec(prop::sample::select(b"\r\naQ".to_vec()), 0..60),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut stream = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n".to_vec();
        let chunks = split_at_points(&body, &cuts);
        for (n, chunk) in chunks.iter().enumerate() {
            let last = if n + 1 == chunks.len() { " LAST" } else { "" };
            stream.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
            stream.extend_from_slice(chunk);
        }
        let (out, events) = run(config(), &[&stream]);
        let messages: Vec<&Vec<u8>> = events.iter().filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        }).collect();
        if has_bare_cr_or_lf(&body) {
            prop_assert!(messages.is_empty());
            prop_assert!(String::from_utf8_lossy(&out).contains("550 5.6.11 "));
        } else {
            prop_assert_eq!(messages, vec![&body]);
        }
    }
}
