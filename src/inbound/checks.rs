//! Checks on a complete message before it is committed: a chain of small checks, each
//! returning a typed [`Verdict`]. SMTP (25 and 587) and the API's send path run the same
//! chain; a check added here (SPF, DKIM, DMARC, spam and virus scanning) applies to both
//! without touching either.
//!
//! A check accepts (possibly with header fields to add and a folder or flags for some
//! recipients) or refuses, temporarily or for good, with the reply the sender reads. The chain
//! stops at the first refusal; the accepts are merged in order.

use std::net::SocketAddr;

use crate::events::{self, SmtpForeignHeaderSender};
use crate::message;
use crate::store::LocalDelivery;

/// A message as the checks see it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The message as the client sent it (before MaiRust's trace header fields).
    pub data: &'a [u8],
    /// The envelope sender (empty for the null sender).
    pub envelope_from: &'a str,
    /// The identity whose mail this is, when the client proved one (SMTP AUTH, the API's
    /// caller's permitted `from`): `From:` and `Sender:` must be it.
    pub sender_identity: Option<&'a str>,
    /// MaiRust vouches for the mail (submission, a trusted network, the API): it signs it.
    pub vouched: bool,
    /// The client.
    pub peer: SocketAddr,
    /// The local copies so far, one per recipient.
    pub deliveries: &'a [LocalDelivery],
}

/// Where a check wants one recipient's copy, and how it arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Another folder (`Junk`, a rule's folder); `None` keeps it.
    pub folder: Option<String>,
    /// Arrive read (or unread); `None` keeps it.
    pub seen: Option<bool>,
}

/// What a check allows, and what it adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Whole header lines to prepend (`Authentication-Results: ...\r\n`).
    pub headers: Vec<String>,
    /// Placements by user id.
    pub placements: Vec<(i64, Placement)>,
}

/// Why a message is refused, with the reply the sender gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SMTP reply code: 4xx is temporary (the client retries), 5xx final.
    pub code: u16,
    /// Enhanced status code.
    pub status: (u8, u16, u16),
    /// What went wrong and what to do.
    pub text: String,
    /// Low-cardinality reason for the refusals metric.
    pub reason: &'static str,
}

impl Refusal {
    /// Whether the sender should try again later.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The message may pass (with what the check adds).
    Accept(Accepted),
    /// The message is refused.
    Refuse(Refusal),
}

impl Verdict {
    /// Accept, adding nothing.
    pub fn pass() -> Self {
        Self::Accept(Accepted::default())
    }
}

/// One check of the chain.
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// Its verdict on `candidate`.
    async fn check(&self, candidate: &Candidate<'_>) -> Verdict;
}

/// The chain, run in order.
pub struct Checks(Vec<Box<dyn Check>>);

impl Checks {
    /// MaiRust's checks: the header section every reader agrees on, then the sender's
    /// ownership of `From:` and `Sender:`.
    pub fn standard() -> Self {
        Self(vec![Box::new(HeaderSection), Box::new(SenderOwnership)])
    }

    /// The accepts of every check merged in order, or the first refusal.
    pub async fn run(&self, candidate: &Candidate<'_>) -> Result<Accepted, Refusal> {
        let mut merged = Accepted::default();
        for check in &self.0 {
            match check.check(candidate).await {
                Verdict::Accept(accepted) => {
                    merged.headers.extend(accepted.headers);
                    merged.placements.extend(accepted.placements);
                }
                Verdict::Refuse(refusal) => {
                    tracing::debug!(
                        check = check.name(),
                        reason = refusal.reason,
                        "message refused"
                    );
                    return Err(refusal);
                }
            }
        }
        Ok(merged)
    }
}

/// Applies `placements` to `deliveries` (the later placement of a user wins).
pub fn place(deliveries: &mut [LocalDelivery], placements: &[(i64, Placement)]) {
    for (user, placement) in placements {
        for delivery in deliveries.iter_mut().filter(|d| d.user_id == *user) {
            if let Some(folder) = &placement.folder {
                delivery.folder.clone_from(folder);
            }
            match placement.seen {
                Some(true) => delivery.flags |= crate::store::flags::SEEN,
                Some(false) => delivery.flags &= !crate::store::flags::SEEN,
                None => {}
            }
        }
    }
}

/// Mail MaiRust vouches for has a header section every reader agrees on (CRLF only, no NUL,
/// every line a field or a continuation, one `From:`), or a check on its fields could pass on
/// a field a recipient never sees.
pub struct HeaderSection;

#[async_trait::async_trait]
impl Check for HeaderSection {
    fn name(&self) -> &'static str {
        "header_section"
    }

    async fn check(&self, candidate: &Candidate<'_>) -> Verdict {
        if !candidate.vouched {
            return Verdict::pass();
        }
        match message::check_header_section(candidate.data) {
            Ok(()) => Verdict::pass(),
            Err(problem) => Verdict::Refuse(Refusal {
                code: 550,
                status: (5, 6, 0),
                text: format!("Message rejected: {problem}"),
                reason: "malformed_header",
            }),
        }
    }
}

/// Every address in `From:` and `Sender:` is the sender's proven identity, so a signed-in user
/// (and their DKIM key) sends only as themselves.
pub struct SenderOwnership;

#[async_trait::async_trait]
impl Check for SenderOwnership {
    fn name(&self) -> &'static str {
        "sender_ownership"
    }

    async fn check(&self, candidate: &Candidate<'_>) -> Verdict {
        let Some(owner) = candidate.sender_identity else {
            return Verdict::pass();
        };
        let foreign = message::foreign_senders(candidate.data, owner);
        let Some(first) = foreign.first() else {
            return Verdict::pass();
        };
        events::emit(SmtpForeignHeaderSender {
            peer: candidate.peer,
            user: owner,
            from: first,
        });
        let shown: String = first.chars().take(64).collect();
        Verdict::Refuse(Refusal {
            code: 553,
            status: (5, 7, 1),
            text: format!("<{shown}>: From/Sender header rejected: not owned by user {owner}"),
            reason: "header_sender_not_owned",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate<'a>(data: &'a [u8], identity: Option<&'a str>, vouched: bool) -> Candidate<'a> {
        Candidate {
            data,
            envelope_from: "bob@example.test",
            sender_identity: identity,
            vouched,
            peer: SocketAddr::from(([127, 0, 0, 1], 2525)),
            deliveries: &[],
        }
    }

    #[tokio::test]
    async fn the_chain_stops_at_the_first_refusal() {
        let checks = Checks::standard();
        let own = b"From: bob@example.test\r\n\r\nhi\r\n";
        assert_eq!(
            checks
                .run(&candidate(own, Some("bob@example.test"), true))
                .await,
            Ok(Accepted::default())
        );
        let two_froms = b"From: bob@example.test\r\nFrom: ceo@x.test\r\n\r\nhi\r\n";
        let refusal = checks
            .run(&candidate(two_froms, Some("bob@example.test"), true))
            .await
            .expect_err("refused");
        assert_eq!((refusal.code, refusal.reason), (550, "malformed_header"));
        let foreign = b"From: ceo@x.test\r\n\r\nhi\r\n";
        let refusal = checks
            .run(&candidate(foreign, Some("bob@example.test"), true))
            .await
            .expect_err("refused");
        assert_eq!((refusal.code, refusal.status), (553, (5, 7, 1)));
        assert!(!refusal.is_temporary());
        // Mail from the internet is neither vouched for nor from a proven identity.
        assert!(checks.run(&candidate(two_froms, None, false)).await.is_ok());
    }

    #[test]
    fn placements_move_a_recipients_copy() {
        let mut deliveries = vec![LocalDelivery::inbox(1), LocalDelivery::inbox(2)];
        place(
            &mut deliveries,
            &[(
                2,
                Placement {
                    folder: Some("Junk".into()),
                    seen: Some(true),
                },
            )],
        );
        assert_eq!(deliveries[0], LocalDelivery::inbox(1));
        assert_eq!(
            (deliveries[1].folder.as_str(), deliveries[1].flags),
            ("Junk", crate::store::flags::SEEN)
        );
    }
}
