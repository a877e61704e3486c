//! A broker with `--seeds` joins the cluster: its peer endpoint (mutual TLS with the node
//! certificate, which must name `--node-id`), the metadata quorum with the seeds as voters,
//! the check that the cluster shares this broker's object store, and its registration.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::peer::{PeerEndpoint, Transport};
use super::tls::Identity;
use crate::config::{parse_seed, Config};
use crate::metadata::quorum::state::Command;
use crate::metadata::quorum::{Quorum, QuorumConfig};

/// How long a starting broker waits for the quorum (a leader it has caught up with).
const QUORUM_WAIT: Duration = Duration::from_secs(120);

/// The object store a broker uses: `--object-store`, or its per-data-dir default.
pub fn store_identity(config: &Config) -> String {
    config
        .object_store
        .clone()
        .unwrap_or_else(|| format!("file://{}", config.data_dir.join("objects").display()))
}

fn voters(config: &Config) -> anyhow::Result<BTreeMap<i32, SocketAddr>> {
    let mut voters = BTreeMap::new();
    for seed in &config.seeds {
        let (id, addr) = parse_seed(seed)?;
        let resolved = addr
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("seed {seed:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("seed {seed:?} resolves to no address"))?;
        voters.insert(id, resolved);
    }
    Ok(voters)
}

/// Starts the endpoint (served until `shutdown`) and the quorum, waits until it has a leader
/// and the cluster's identity, and registers this broker at `advertised`.
pub async fn join(
    config: &Config,
    advertised: (String, i32),
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Arc<Quorum>, Arc<PeerEndpoint>)> {
    let tls = config
        .peer_tls
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--seeds needs the peer TLS files"))?;
    let identity = Identity::load(tls)?;
    let voters = voters(config)?;
    if identity.node_id != config.node_id {
        anyhow::bail!(
            "{} names node {}, but this broker is --node-id {}: issue it a certificate with `strata cluster issue --node-id {}`",
            tls.cert.display(),
            identity.node_id,
            config.node_id,
            config.node_id
        );
    }
    let socket = match &config.prebound.peer {
        Some(socket) => socket.try_clone()?,
        None => std::net::UdpSocket::bind(&config.peer_listen)
            .map_err(|e| anyhow::anyhow!("binding peer listener {}: {e}", config.peer_listen))?,
    };
    let endpoint = PeerEndpoint::new(
        socket,
        &identity,
        Transport::for_session_timeout(Duration::from_millis(
            config.broker.broker_session_timeout_ms,
        )),
    )?;
    let peer_addr = endpoint.local_addr()?;
    drop(crate::telemetry::spawn(endpoint.clone().serve(shutdown)));
    // A third of the session timeout (500 ms to 1 s): a lost controller is replaced, and the
    // brokers it served fenced, within about one session timeout.
    let election =
        Duration::from_millis((config.broker.broker_session_timeout_ms / 3).clamp(500, 1000));
    let quorum = Quorum::start(
        QuorumConfig {
            node_id: config.node_id,
            dir: config.data_dir.join("metadata"),
            voters: voters.clone(),
            peer_addr: Some(peer_addr),
            snapshot_entries: config.broker.metadata_snapshot_entries,
            heartbeat: election / 5,
            election_timeout: election,
            object_store: Some(store_identity(config)),
            broker_heartbeat: Duration::from_millis(config.broker.broker_heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.broker.broker_session_timeout_ms),
        },
        Some(endpoint.clone()),
    )
    .await;
    let quorum = match quorum {
        Ok(quorum) => quorum,
        Err(e) => {
            endpoint.shut().await;
            return Err(e);
        }
    };
    tracing::info!(%peer_addr, voters = ?voters, "joining the cluster");
    match register(config, &quorum, &voters, advertised, peer_addr).await {
        Ok(()) => Ok((quorum, endpoint)),
        Err(e) => {
            // A broker that will not start lets go of its raft node and its peer socket now,
            // not when the last task holding them ends: a restart in the same directory (or
            // on the same prebound socket) must be the only node there.
            quorum.shutdown().await;
            Err(e)
        }
    }
}

/// Waits until the quorum has a leader and the cluster's identity, checks the bucket, and
/// registers this broker at `advertised`.
async fn register(
    config: &Config,
    quorum: &Quorum,
    voters: &BTreeMap<i32, SocketAddr>,
    advertised: (String, i32),
    peer_addr: SocketAddr,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + QUORUM_WAIT;
    loop {
        if quorum.ready(Duration::from_secs(1)).await && !quorum.state().cluster_id.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no metadata quorum within {QUORUM_WAIT:?}: a majority of the voters {:?} must be running and reachable",
                voters.keys().collect::<Vec<_>>()
            );
        }
    }
    let state = quorum.state();
    let ours = store_identity(config);
    if state.object_store.as_deref() != Some(ours.as_str()) {
        anyhow::bail!(
            "this broker's object store {ours:?} is not the cluster's {:?}: every broker of a cluster shares one bucket (--object-store)",
            state.object_store.as_deref().unwrap_or("(none)")
        );
    }
    claim_bucket(config, &state.cluster_id).await?;
    quorum
        .register(Command::RegisterBroker {
            id: config.node_id,
            host: advertised.0,
            port: advertised.1,
            peer: peer_addr.to_string(),
            rack: config.broker.broker_rack.clone(),
            incarnation: uuid::Uuid::new_v4(),
        })
        .await?;
    Ok(())
}

/// `_strata/cluster.json` in the bucket names the cluster that uses it: written if absent
/// (create-if-absent, so two clusters racing for one bucket cannot both win), and a broker of
/// another cluster refuses to start.
async fn claim_bucket(config: &Config, cluster_id: &str) -> anyhow::Result<()> {
    use object_store::{ObjectStoreExt, PutMode, PutOptions};
    let store = match &config.object_store_override {
        Some(store) => store.clone(),
        None => crate::store::Store::from_url_with_options(
            &store_identity(config),
            &config.object_store_options,
        )?,
    };
    let path = store.path("_strata/cluster.json");
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "cluster_id": cluster_id,
        "object_store": store_identity(config),
    }))?;
    let created = store
        .inner()
        .put_opts(
            &path,
            body.into(),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = store.inner().get(&path).await?.bytes().await?;
            let owner: serde_json::Value = serde_json::from_slice(&existing)
                .map_err(|e| anyhow::anyhow!("{path} is unreadable: {e}"))?;
            match owner["cluster_id"].as_str() {
                Some(id) if id == cluster_id => Ok(()),
                other => anyhow::bail!(
                    "the object store {} belongs to cluster {}, not to this cluster ({cluster_id}): one bucket per cluster",
                    store_identity(config),
                    other.unwrap_or("(unknown)")
                ),
            }
        }
        Err(e) => Err(anyhow::anyhow!("claiming the bucket ({path}): {e}")),
    }
}
