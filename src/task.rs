//! Tasks owned by what spawned them: the handle aborts its task when dropped, so no task
//! outlives its owner (an actor's state, a store, a listener).

use std::future::Future;

/// A spawned task that is aborted when this handle is dropped.
#[derive(Debug)]
#[must_use = "dropping an OwnedTask aborts its task"]
pub struct OwnedTask(tokio::task::AbortHandle);

impl OwnedTask {
    /// Spawns `future` on the current runtime, owned by the returned handle.
    pub fn spawn<F>(future: F) -> Self
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Self::adopt(&tokio::spawn(future))
    }

    /// Takes ownership of a task spawned elsewhere (for example by ractor's `send_interval`).
    pub fn adopt<T>(handle: &tokio::task::JoinHandle<T>) -> Self {
        Self(handle.abort_handle())
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_dropped_handle_stops_its_task() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = OwnedTask::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(rx.try_recv().is_ok(), "the task runs while owned");
        drop(task);
        tokio::task::yield_now().await;
        // Aborted: its sender is gone, so the channel ends once drained.
        tokio::time::sleep(Duration::from_secs(5)).await;
        while rx.try_recv().is_ok() {}
        assert!(rx.recv().await.is_none(), "no task outlives its handle");
    }
}
