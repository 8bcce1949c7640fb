//! A harness for actor-level tests. The actors under test run under a probe supervisor that
//! records how each of its children exited; [`Harness::finish`] stops the whole tree and fails
//! the test if an actor failed (panicked or returned an error) without the test expecting it,
//! if any actor of the tree is still running after its parent stopped, or if a task spawned
//! during the test outlives it (a timer or a forwarder nobody owns).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};

use super::exit::{ExitReason, child_exit};

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
        tokio::time::sleep(Duration::from_millis(20)).await;
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} task(s) outlived the actors that spawned them",
            metrics.num_alive_tasks() - self.tasks_before
        );
    }
}
