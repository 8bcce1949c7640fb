//! The root supervisor.
//!
//! ractor stops a parent when a child exits unless the parent restarts it itself; this is the
//! one place that does so for the top of the tree. Each child is described by a [`ChildSpec`]
//! whose `spawn` function builds it (and publishes its new address, if others send to it). A
//! child that fails or stops on its own is restarted under [`RestartPolicy::STANDARD`] and
//! logged. Once the supervisor is stopping, children are not restarted.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use super::exit::{ExitReason, child_exit};
use super::restart::{RestartPolicy, Restarts};

/// The current address of a supervised actor. The child's spawn function replaces it on every
/// restart, so holders never keep a dead address.
pub struct ActorSlot<M>(Arc<std::sync::RwLock<Option<ActorRef<M>>>>);

impl<M> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Default for ActorSlot<M> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<M: ractor::Message> ActorSlot<M> {
    /// Publishes a new address.
    pub fn set(&self, actor: ActorRef<M>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(actor);
    }

    /// The current address, if the actor has started.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Builds a child linked to the given supervisor.
pub type SpawnFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

/// A supervised child: a stable name (for logs and metrics) and how to (re)build it.
#[derive(Clone)]
pub struct ChildSpec {
    /// Name in logs and in the `actor` label of the restart counter.
    pub name: &'static str,
    /// Builds the child.
    pub spawn: SpawnFn,
}

impl ChildSpec {
    /// A spec from a name and an async spawn function.
    pub fn new<F, Fut>(name: &'static str, spawn: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name,
            spawn: Arc::new(move |sup| Box::pin(spawn(sup))),
        }
    }
}

/// Messages to the root supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Rebuild the named child (sent to itself after the backoff).
    Restart(&'static str),
}

/// The root of the actor tree.
pub struct RootSupervisor;

/// The supervisor's state.
pub struct SupervisorState {
    specs: Vec<ChildSpec>,
    running: HashMap<ActorId, &'static str>,
    children: HashMap<&'static str, Restarts>,
    /// The current cell of each child, for the ordered shutdown.
    cells: HashMap<&'static str, ActorCell>,
}

impl RootSupervisor {
    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        spec: &ChildSpec,
    ) -> Result<(), SpawnErr> {
        let cell = (spec.spawn)(myself.get_cell()).await?;
        state.running.insert(cell.get_id(), spec.name);
        state.cells.insert(spec.name, cell.clone());
        state
            .children
            .entry(spec.name)
            .or_insert_with(|| Restarts::new(RestartPolicy::STANDARD))
            .started();
        tracing::debug!(actor = spec.name, "actor started");
        Ok(())
    }

    fn schedule_restart(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        name: &'static str,
    ) {
        let Some(child) = state.children.get_mut(name) else {
            return;
        };
        let delay = child.failed(name);
        myself.send_after(delay, move || SupervisorMsg::Restart(name));
    }
}

impl Actor for RootSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Vec<ChildSpec>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        specs: Vec<ChildSpec>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            specs: specs.clone(),
            running: HashMap::new(),
            children: HashMap::new(),
            cells: HashMap::new(),
        };
        for spec in &specs {
            Self::start_child(&myself, &mut state, spec)
                .await
                .map_err(|e| format!("cannot start {}: {e}", spec.name))?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Restart(name) => {
                let Some(spec) = state.specs.iter().find(|s| s.name == name).cloned() else {
                    return Ok(());
                };
                if let Err(error) = Self::start_child(&myself, state, &spec).await {
                    tracing::error!(actor = name, %error, "actor restart failed");
                    Self::schedule_restart(&myself, state, name);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = child_exit(event) else {
            return Ok(());
        };
        let Some(name) = state.running.remove(&cell.get_id()) else {
            return Ok(());
        };
        tracing::error!(actor = name, %reason, "supervised actor exited");
        Self::schedule_restart(&myself, state, name);
        Ok(())
    }

    /// Stops the children gracefully, one at a time in the reverse of their start order
    /// (their `post_stop` runs), rather than letting ractor kill them with the supervisor:
    /// listeners stop accepting first, the queue drains its partitions and releases their
    /// leases next, and the storage writer, started first, stops last, so every result still
    /// has a writer to commit it.
    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.running.clear();
        for spec in state.specs.iter().rev() {
            if let Some(cell) = state.cells.remove(spec.name) {
                cell.stop_and_wait(ExitReason::Shutdown.stop(), Some(Duration::from_secs(30)))
                    .await
                    .ok();
            }
        }
        myself
            .stop_children_and_wait(ExitReason::Shutdown.stop(), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky;

    impl Actor for Flaky {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<()>,
            _: (),
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            panic!("injected failure");
        }
    }

    /// Under the paused clock: each restart waits the policy's backoff, doubling while the
    /// child keeps failing, and the tree leaves nothing running.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_child_is_restarted_after_a_growing_backoff() {
        let harness = crate::actors::harness::Harness::new().await;
        let starts: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>> = Arc::default();
        let current: Arc<std::sync::Mutex<Option<ActorRef<()>>>> = Arc::default();
        let spec = {
            let starts = starts.clone();
            let current = current.clone();
            ChildSpec::new("flaky", move |sup| {
                let starts = starts.clone();
                let current = current.clone();
                async move {
                    let (actor, _) = Actor::spawn_linked(None, Flaky, (), sup).await?;
                    starts
                        .lock()
                        .expect("lock")
                        .push(tokio::time::Instant::now());
                    *current.lock().expect("lock") = Some(actor.clone());
                    Ok(actor.get_cell())
                }
            })
        };
        Actor::spawn_linked(None, RootSupervisor, vec![spec], harness.parent())
            .await
            .expect("root starts");
        for round in 1..=3 {
            let failed_at = tokio::time::Instant::now();
            let child = current.lock().expect("lock").clone().expect("child");
            child.send_message(()).expect("send");
            while starts.lock().expect("lock").len() <= round {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let restarted = starts.lock().expect("lock")[round];
            let waited = restarted - failed_at;
            let backoff = RestartPolicy::STANDARD.delay(round as u32 - 1);
            assert!(
                waited >= backoff && waited < backoff + Duration::from_millis(50),
                "restart {round} after {waited:?}, backoff {backoff:?}"
            );
        }
        // The supervisor handled every failure itself.
        harness.finish(0).await;
    }
}
