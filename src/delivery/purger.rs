//! Deletes finished queue rows after the retention period, with the messages and blobs that
//! nothing refers to any more. Idempotent, so several nodes may run it.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::store::{Stores, now_millis};

/// The purger actor; its only message is the periodic tick.
pub struct Purger;

/// Arguments of the purger.
pub struct PurgerArgs {
    /// Where to purge.
    pub stores: Stores,
    /// How long finished rows stay.
    pub retention: Duration,
}

/// How often to purge.
const PERIOD: Duration = Duration::from_secs(600);

impl Actor for Purger {
    type Msg = ();
    type State = (PurgerArgs, tokio::task::JoinHandle<()>);
    type Arguments = PurgerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: PurgerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer = myself.send_interval(PERIOD, || ());
        Ok((args, timer))
    }

    async fn handle(
        &self,
        _myself: ActorRef<()>,
        _message: (),
        (args, _): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let before = now_millis() - args.retention.as_millis() as i64;
        match args.stores.mailboxes.purge_finished(before).await {
            Ok(keys) => {
                if !keys.is_empty() {
                    tracing::info!(blobs = keys.len(), "purged finished queue entries");
                }
                args.stores.delete_blobs(&keys).await;
            }
            Err(error) => tracing::warn!(%error, "queue purge failed"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        (_, timer): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        timer.abort();
        Ok(())
    }
}
