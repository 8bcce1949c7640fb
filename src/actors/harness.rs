//! A harness for actor-level tests. The actors under test run under a probe supervisor that
//! records how each of its children exited; [`Harness::finish`] stops the whole tree and fails
//! the test if an actor failed (panicked or returned an error) without the test expecting it,
//! if any actor of the tree is still running after its parent stopped, or if a task spawned
//! during the test outlives it (a timer or a forwarder nobody owns).
//!
//! Actors backed by a real store run under tokio's paused clock with a [`ClockHold`]: SQLite
//! answers from a thread of its own, and a paused clock left to jump ahead whenever the
//! runtime waits would run every timer and timeout out before the answer came. Held, the
//! clock moves only when the test calls `tokio::time::advance`, so each timing rule (a
//! restart backoff, a lease deadline, a poll) is checked at the exact instant it should fire,
//! while the store's work takes the real time it needs ([`real_sleep`], [`eventually`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};

use super::exit::{ExitReason, child_exit};

/// Keeps tokio's paused clock from jumping ahead while it lives: a running blocking task
/// inhibits the runtime's auto-advance, so time moves only by `tokio::time::advance`.
/// Create it first thing in a `start_paused` test, before anything waits.
pub struct ClockHold {
    /// Dropping it ends the blocking task.
    _release: std::sync::mpsc::Sender<()>,
}

impl ClockHold {
    /// Holds the clock until dropped.
    pub fn hold() -> Self {
        let (release, released) = std::sync::mpsc::channel::<()>();
        // Ends when the sender is dropped.
        tokio::task::spawn_blocking(move || {
            let _ = released.recv();
        });
        Self { _release: release }
    }
}

/// Waits `duration` of real time, whatever tokio's clock does (a blocking task also keeps a
/// paused clock from jumping ahead meanwhile).
pub async fn real_sleep(duration: Duration) {
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(duration)).await;
}

/// Waits (real time, at most 20 s) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, || {
        let checked = check();
        async move { checked.await.then_some(()) }
    })
    .await
}

/// Waits (real time, at most 20 s) until `check` finds something, and returns it.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        real_sleep(Duration::from_millis(20)).await;
    }
}

/// Records the exits of its children.
struct Probe;

type Exits = Arc<Mutex<Vec<ExitReason>>>;

impl Actor for Probe {
    type Msg = ();
    type State = Exits;
    type Arguments = Exits;

    async fn pre_start(&self, _: ActorRef<()>, exits: Exits) -> Result<Exits, ActorProcessingErr> {
        Ok(exits)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        exits: &mut Exits,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, reason)) = child_exit(event) {
            exits.lock().unwrap_or_else(|e| e.into_inner()).push(reason);
        }
        Ok(())
    }
}

/// The runtime's live tasks once the ones finishing their start-up (a pool's first
/// connections, for example) are gone: the count stops changing.
async fn settled_task_count() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut last = metrics.num_alive_tasks();
    for _ in 0..50 {
        real_sleep(Duration::from_millis(20)).await;
        let now = metrics.num_alive_tasks();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// The probe and what it saw.
pub struct Harness {
    probe: ActorRef<()>,
    handle: tokio::task::JoinHandle<()>,
    exits: Exits,
    tasks_before: usize,
}

impl Harness {
    /// A probe to spawn the actors under test under (`spawn_linked(.., harness.parent())`).
    /// Tasks alive now (a store's own, for example) are not counted as leaks.
    pub async fn new() -> Self {
        let tasks_before = settled_task_count().await;
        let exits = Exits::default();
        let (probe, handle) = Actor::spawn(None, Probe, exits.clone())
            .await
            .expect("probe starts");
        Self {
            probe,
            handle,
            exits,
            tasks_before,
        }
    }

    /// The supervisor for the actors under test.
    pub fn parent(&self) -> ActorCell {
        self.probe.get_cell()
    }

    /// How the probe's children exited so far.
    pub fn exits(&self) -> Vec<ExitReason> {
        self.exits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every actor of the tree under the probe, alive now.
    fn tree(&self) -> Vec<ActorCell> {
        let mut out = Vec::new();
        let mut next = self.probe.get_children();
        while let Some(cell) = next.pop() {
            next.extend(cell.get_children());
            out.push(cell);
        }
        out
    }

    /// Stops every actor under the probe (children first get a shutdown, as at the end of
    /// the process) and checks that the test leaked and failed nothing: `failures` actor
    /// failures were expected among the probe's children.
    pub async fn finish(self, failures: usize) {
        let tree = self.tree();
        for child in self.probe.get_children() {
            child
                .stop_and_wait(ExitReason::Shutdown.stop(), Some(Duration::from_secs(60)))
                .await
                .expect("the actor under test stops");
        }
        self.probe.stop(None);
        self.handle.await.expect("probe stops");
        let leaked: Vec<String> = tree
            .iter()
            .filter(|c| c.get_status() != ActorStatus::Stopped)
            .map(|c| format!("{:?} ({:?})", c.get_id(), c.get_status()))
            .collect();
        assert!(leaked.is_empty(), "actors still running: {leaked:?}");
        let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let failed: Vec<ExitReason> = exits.into_iter().filter(ExitReason::is_failure).collect();
        assert_eq!(
            failed.len(),
            failures,
            "unexpected actor failures: {failed:?}"
        );
        // Aborted tasks go away at their next poll: give them a few turns.
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..100 {
            if metrics.num_alive_tasks() <= self.tasks_before {
                return;
            }
            real_sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} task(s) outlived the actors that spawned them",
            metrics.num_alive_tasks() - self.tasks_before
        );
    }
}
