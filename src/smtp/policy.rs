//! What the session driver asks the application: one call per event of the sans-I/O session
//! that needs a decision ([`crate::inbound::smtp::SmtpPolicy`] is MaiRust's).

use std::future::Future;

use super::session::{Answer, AuthMechanism, Envelope};

/// The decisions a session's events need, one call per event; each returns the answer for
/// [`super::session::ServerSession::answer`].
///
/// A policy lives as long as its connection and may keep per-transaction state: a new
/// `mail_from` starts a transaction, and `message` ends it.
pub trait SessionPolicy: Send {
    /// `AUTH`: checks the credentials (`authzid` is the PLAIN authorization identity, if
    /// any) and answers [`Answer::Auth`].
    fn authenticate(
        &mut self,
        mechanism: AuthMechanism,
        authzid: Option<&str>,
        username: &str,
        password: &str,
    ) -> impl Future<Output = Answer> + Send;

    /// `MAIL FROM:<address>`; `authenticated` is the session's signed-in user, if any.
    fn mail_from(
        &mut self,
        address: &str,
        authenticated: Option<&str>,
    ) -> impl Future<Output = Answer> + Send;

    /// `RCPT TO:<address>`; `authenticated` is the session's signed-in user, if any.
    fn rcpt_to(
        &mut self,
        address: &str,
        authenticated: Option<&str>,
    ) -> impl Future<Output = Answer> + Send;

    /// A complete message (end of DATA or BDAT LAST) with its envelope.
    fn message(&mut self, envelope: Envelope, data: Vec<u8>)
    -> impl Future<Output = Answer> + Send;
}
