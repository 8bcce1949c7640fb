//! Why an actor stopped.
//!
//! ractor carries a stop reason as text (`stop(Some(String))`) and a failure as a boxed error.
//! [`ExitReason`] is the one place that text is written ([`ExitReason::stop`]) and read back
//! ([`child_exit`]), so supervisors branch on a kind, never on words.

use ractor::{ActorCell, SupervisionEvent};

/// Why an actor stopped, as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The process is shutting down; nothing is restarted.
    Shutdown,
    /// A partition queue is handed to the node that should own it; its lease is released
    /// after, and it is not restarted here.
    Handover,
    /// A partition's lease was taken over (or expired) while this node worked on it: the
    /// partition is no longer ours, so it is forgotten, not restarted.
    LeaseLost,
    /// Stopped without a reason.
    Stopped,
    /// Panicked, returned an error from a handler, or stopped with a reason this module does
    /// not know: restarted after the [`super::restart::RestartPolicy`]'s backoff.
    Failed(String),
}

impl ExitReason {
    const SHUTDOWN: &'static str = "shutdown";
    const HANDOVER: &'static str = "handover";
    const LEASE_LOST: &'static str = "lease lost";

    /// The text ractor carries for this reason.
    fn text(&self) -> String {
        match self {
            Self::Shutdown => Self::SHUTDOWN.into(),
            Self::Handover => Self::HANDOVER.into(),
            Self::LeaseLost => Self::LEASE_LOST.into(),
            Self::Stopped => "stopped".into(),
            Self::Failed(why) => why.clone(),
        }
    }

    /// Reads a stop reason back.
    fn from_text(text: Option<String>) -> Self {
        match text.as_deref() {
            None => Self::Stopped,
            Some(Self::SHUTDOWN) => Self::Shutdown,
            Some(Self::HANDOVER) => Self::Handover,
            Some(Self::LEASE_LOST) => Self::LeaseLost,
            Some(_) => Self::Failed(text.unwrap_or_default()),
        }
    }

    /// The reason to pass to ractor's `stop` and `stop_and_wait`.
    pub fn stop(&self) -> Option<String> {
        Some(self.text())
    }

    /// Whether the exit is a failure to restart from.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// The child and why it exited, when `event` says a child stopped or failed.
pub fn child_exit(event: SupervisionEvent) -> Option<(ActorCell, ExitReason)> {
    match event {
        SupervisionEvent::ActorFailed(cell, error) => {
            Some((cell, ExitReason::Failed(error.to_string())))
        }
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell, ExitReason::from_text(reason)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_itself() {
        for reason in [
            ExitReason::Shutdown,
            ExitReason::Handover,
            ExitReason::LeaseLost,
            ExitReason::Failed("database gone".into()),
        ] {
            assert_eq!(ExitReason::from_text(reason.stop()), reason);
        }
        assert_eq!(ExitReason::from_text(None), ExitReason::Stopped);
        assert!(ExitReason::from_text(Some("odd".into())).is_failure());
        assert!(!ExitReason::LeaseLost.is_failure());
    }
}
