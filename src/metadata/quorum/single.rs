//! A broker without seeds: a quorum of one (no peer endpoint, no certificates), and the one-time
//! import of a data dir written before the quorum (`meta/topics.json`,
//! `meta/producer-id-block`): cluster id, topic ids and producer ids are kept, the partitions
//! stay where they are, and `meta/` is renamed `meta.imported/` once the import is committed.

use std::sync::Arc;
use std::time::Duration;

use super::state::Command;
use super::{Quorum, QuorumConfig};
use crate::config::Config;
use crate::metadata::catalogue;

/// How long a single node waits for its own election at start.
const ELECTED: Duration = Duration::from_secs(30);

/// Starts this broker's quorum of one, imports an older data dir, and registers the broker.
pub async fn open_single(config: &Config) -> anyhow::Result<Arc<Quorum>> {
    let quorum = Quorum::start(
        QuorumConfig {
            node_id: config.node_id,
            dir: config.data_dir.join("metadata"),
            voters: Default::default(),
            peer_addr: None,
            snapshot_entries: config.broker.metadata_snapshot_entries,
            heartbeat: Duration::from_millis(200),
            election_timeout: Duration::from_millis(1000),
            object_store: config.object_store.clone(),
            broker_heartbeat: Duration::from_millis(config.broker.broker_heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.broker.broker_session_timeout_ms),
        },
        None,
    )
    .await?;
    if !quorum.ready(ELECTED).await {
        anyhow::bail!("the metadata quorum of one did not elect itself within {ELECTED:?}");
    }
    import(config, &quorum).await?;
    quorum
        .register(Command::RegisterBroker {
            id: config.node_id,
            host: String::new(),
            port: 0,
            peer: String::new(),
            rack: config.broker.broker_rack.clone(),
            incarnation: uuid::Uuid::new_v4(),
        })
        .await?;
    // The identity is proposed by the upkeep; a single node wants it before it opens.
    quorum.record_identity().await?;
    Ok(quorum)
}

/// Takes `meta/` of an older data dir into the quorum, once.
async fn import(config: &Config, quorum: &Quorum) -> anyhow::Result<()> {
    let meta = config.data_dir.join("meta");
    if !catalogue::catalogue_path(&config.data_dir).exists() {
        return Ok(());
    }
    let dir = config.data_dir.clone();
    let (old, producer_ids) = crate::telemetry::spawn_blocking(move || {
        anyhow::Ok((
            catalogue::load(&dir)?,
            crate::metadata::local::read_producer_id_block(&dir)?,
        ))
    })
    .await??;
    let topics = old.topics.len();
    quorum
        .propose(Command::Import {
            node: config.node_id,
            cluster_id: old.cluster_id,
            topics: old.topics,
            deleting: old.deleting,
            next_producer_id: producer_ids,
        })
        .await?;
    let imported = config.data_dir.join("meta.imported");
    crate::telemetry::spawn_blocking(move || {
        std::fs::rename(&meta, &imported)?;
        std::fs::File::open(imported.parent().expect("data dir"))?.sync_all()
    })
    .await??;
    tracing::info!(
        topics,
        "imported the metadata of a data dir from before the quorum (meta/ is now meta.imported/)"
    );
    Ok(())
}
