//! Starting and stopping a broker: listeners, the accept loop, background duties (retention,
//! flush.ms, producer snapshots) and a clean shutdown that lets in-flight requests finish.

mod accept;
mod admin;
mod admin_conn;
mod connection;
#[cfg(feature = "sql")]
mod sql;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Config;
use crate::protocol::frame::MemoryBudget;
use crate::telemetry::Telemetry;

/// How long shutdown waits for in-flight requests before closing connections anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a cluster broker's shutdown waits for the controller to move its leaderships.
const CONTROLLED_SHUTDOWN: Duration = Duration::from_secs(10);
/// How often flush.ms deadlines are checked.
const FLUSH_TICK: Duration = Duration::from_millis(100);
/// How often histogram samples are folded into their summaries between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A running broker. Dropping it without `shutdown` leaves the log to be recovered on next start,
/// like a crash.
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    telemetry: Telemetry,
    kafka_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningBroker {
    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// This broker's metrics (what its `/metrics` renders) and the scope its tasks run in.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// In a cluster, first moves its leaderships away (controlled shutdown, bounded by
    /// [`CONTROLLED_SHUTDOWN`]); then stops accepting, lets in-flight requests finish, and
    /// closes every partition cleanly.
    pub async fn shutdown(mut self) {
        let broker = self.broker.clone();
        let moved = self
            .telemetry
            .scope(async move { broker.controlled_shutdown().await });
        if tokio::time::timeout(CONTROLLED_SHUTDOWN, moved)
            .await
            .is_err()
        {
            tracing::warn!("controlled shutdown did not complete in time; shutting down anyway");
        }
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace expired; aborting remaining tasks");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        let broker = self.broker.clone();
        let telemetry = self.telemetry.clone();
        drop(self);
        broker.metadata().close().await;
        let _ = telemetry.spawn_blocking(move || broker.shutdown()).await;
        tracing::info!("broker stopped cleanly");
    }
}

/// Opens the log, binds the listeners and starts serving.
pub async fn start(config: Config) -> anyhow::Result<RunningBroker> {
    start_with_clock(config, Clock::System).await
}

/// Builds the broker's [`Telemetry`] first: everything the broker does from here on — opening
/// the log included — records into it, in its scope.
pub async fn start_with_clock(config: Config, clock: Clock) -> anyhow::Result<RunningBroker> {
    let telemetry = Telemetry::with_cpu_threads(config.node_id, config.broker.request_cpu_threads);
    telemetry
        .scope(start_in_scope(config, clock, telemetry.clone()))
        .await
}

async fn start_in_scope(
    config: Config,
    clock: Clock,
    telemetry: Telemetry,
) -> anyhow::Result<RunningBroker> {
    let max_connections = connection_cap(&config);
    std::fs::create_dir_all(&config.data_dir)?;
    let ready: Arc<OnceLock<Arc<Broker>>> = Arc::new(OnceLock::new());
    let admin_listener = match &config.prebound.admin {
        Some(l) => prebound(l)?,
        None => TcpListener::bind(&config.admin_listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding admin listener {}: {e}", config.admin_listen))?,
    };
    let admin_addr = admin_listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    telemetry.spawn_in(
        &mut tasks,
        admin::serve(
            accept::Acceptor::new(
                admin_listener,
                accept::Caps::new(
                    "admin",
                    config.broker.admin_max_connections,
                    usize::MAX,
                    Default::default(),
                ),
            ),
            admin_conn::AdminLimits {
                header_read_timeout: Duration::from_millis(
                    config.broker.admin_header_read_timeout_ms as u64,
                ),
                idle: Duration::from_millis(config.broker.admin_idle_timeout_ms as u64),
            },
            ready.clone(),
            telemetry.clone(),
            shutdown_rx.clone(),
        ),
    );

    // Bound first: a cluster registers the address clients are told of. Connections wait in
    // the backlog until the broker is open.
    let listener = match &config.prebound.kafka {
        Some(l) => prebound(l)?,
        None => TcpListener::bind(&config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding Kafka listener {}: {e}", config.listen))?,
    };
    let kafka_addr = listener.local_addr()?;
    let (host, port) = advertised(&config, kafka_addr)?;
    let mut peer = None;
    let metadata: Arc<dyn crate::metadata::Metadata> = if config.seeds.is_empty() {
        crate::metadata::quorum::open_single(&config).await?
    } else {
        let (quorum, endpoint) =
            crate::cluster::join::join(&config, (host.clone(), port), shutdown_rx.clone()).await?;
        peer = Some(endpoint);
        quorum
    };
    let broker = telemetry
        .spawn_blocking(move || Broker::open(config, clock, metadata))
        .await??;
    let broker = Arc::new(broker);
    broker.set_advertised(host, port);
    if let Some(endpoint) = peer {
        broker.attach_replication(endpoint, shutdown_rx.clone());
    }
    broker.adopt_roles().await;
    broker.ensure_offsets_topic().await?;
    if let Some(tiering) = &broker.tiering {
        tiering.attach(&*broker).await;
    }

    let settings = &broker.config.broker;
    let budget = MemoryBudget::new(settings.queued_max_request_bytes);
    budget.record();
    metrics::gauge!("strata_request_cpu_threads").set(telemetry.cpu().threads() as f64);
    metrics::gauge!("strata_request_cpu_queued").set(0.0);
    let limits = connection::Limits {
        max_frame: settings.socket_request_max_bytes,
        idle: Duration::from_millis(settings.connections_max_idle_ms as u64),
        read_timeout: Duration::from_millis(settings.request_read_timeout_ms as u64),
    };
    let caps = accept::Caps::new(
        "kafka",
        max_connections,
        settings.max_connections_per_ip,
        settings.max_connections_per_ip_overrides.clone(),
    );
    telemetry.spawn_in(
        &mut tasks,
        accept_loop(
            broker.clone(),
            telemetry.clone(),
            accept::Acceptor::new(listener, caps),
            (budget, limits),
            shutdown_rx.clone(),
        ),
    );
    telemetry.spawn_in(&mut tasks, broker.clone().run_applier(shutdown_rx.clone()));
    if !broker.config.seeds.is_empty() {
        telemetry.spawn_in(
            &mut tasks,
            broker
                .clone()
                .create_offsets_topic_when_due(shutdown_rx.clone()),
        );
        telemetry.spawn_in(
            &mut tasks,
            broker.clone().run_isr_upkeep(shutdown_rx.clone()),
        );
        telemetry.spawn_in(
            &mut tasks,
            broker.clone().run_leader_rebalance(shutdown_rx.clone()),
        );
    }
    telemetry.spawn_in(
        &mut tasks,
        crate::coordinator::run(broker.clone(), shutdown_rx.clone()),
    );
    telemetry.spawn_in(
        &mut tasks,
        background(broker.clone(), telemetry.clone(), shutdown_rx.clone()),
    );
    if broker.tiering.is_some() {
        telemetry.spawn_in(
            &mut tasks,
            offload_loop(broker.clone(), telemetry.clone(), shutdown_rx),
        );
    }
    let _ = ready.set(broker.clone());
    tracing::info!(%kafka_addr, %admin_addr, node_id = telemetry.node_id(), data_dir = %broker.config.data_dir.display(), "strata ready");
    Ok(RunningBroker {
        broker,
        telemetry,
        kafka_addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

/// A listener the caller bound (tests), made a tokio one.
fn prebound(listener: &std::net::TcpListener) -> anyhow::Result<TcpListener> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// `--advertise host:port`, or the address actually bound.
fn advertised(config: &Config, bound: SocketAddr) -> anyhow::Result<(String, i32)> {
    match &config.advertise {
        Some(a) => {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("--advertise must be host:port, got {a:?}"))?;
            let port: i32 = port
                .parse()
                .map_err(|_| anyhow::anyhow!("--advertise port in {a:?} is not a number"))?;
            Ok((
                host.trim_matches(|c| c == '[' || c == ']').to_string(),
                port,
            ))
        }
        None => Ok((bound.ip().to_string(), bound.port() as i32)),
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    telemetry: Telemetry,
    mut acceptor: accept::Acceptor,
    (budget, limits): (MemoryBudget, connection::Limits),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer, slot) = tokio::select! {
            a = acceptor.accept() => a,
            _ = shutdown.changed() => break,
        };
        let broker = broker.clone();
        let budget = budget.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        telemetry.spawn_in(&mut connections, async move {
            connection::serve(broker, stream, peer, budget, limits, shutdown).await;
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Retention every `log.retention.check.interval.ms`, flush.ms every tick, producer snapshots with
/// retention so that replay after a crash stays short; metrics upkeep.
async fn background(
    broker: Arc<Broker>,
    telemetry: Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    let retention_every =
        Duration::from_millis(broker.config.broker.log_retention_check_interval_ms.max(1) as u64);
    let mut retention = tokio::time::interval(retention_every);
    let mut flush = tokio::time::interval(FLUSH_TICK);
    let mut upkeep = tokio::time::interval(METRICS_UPKEEP);
    let mut checkpoint = tokio::time::interval(Duration::from_millis(
        broker
            .config
            .broker
            .replica_high_watermark_checkpoint_interval_ms,
    ));
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = flush.tick() => {
                let now = broker.clock.now_ms();
                for p in broker.partitions() {
                    if let Err(e) = p.maybe_flush(now).await {
                        tracing::error!(topic = p.topic, partition = p.index, error = %e, "flush failed");
                    }
                }
            }
            _ = retention.tick() => {
                let broker = broker.clone();
                let _ = telemetry.spawn_blocking(move || apply_retention(&broker)).await;
            }
            _ = upkeep.tick() => telemetry.run_upkeep(),
            _ = checkpoint.tick() => {
                let broker = broker.clone();
                let written = telemetry.spawn_blocking(move || broker.checkpoint_high_watermarks()).await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(error = %e, "writing the high-watermark checkpoint failed; it is retried");
                }
            }
        }
    }
}

/// Offload passes every `remote.log.manager.task.interval.ms`, and right after a topic is
/// deleted (its remote data goes first thing in a pass), in their own task so a slow or
/// unreachable object store delays nothing else.
async fn offload_loop(
    broker: Arc<Broker>,
    telemetry: Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(tiering) = broker.tiering.clone() else {
        return;
    };
    let every = Duration::from_millis(
        broker
            .config
            .broker
            .remote_log_manager_task_interval_ms
            .max(10) as u64,
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
            _ = tiering.tier().woken() => {}
        }
        // A pass runs as its own task: a bug that panics in one pass is logged and the next
        // pass still runs, instead of offload stopping silently for good.
        let (tiering, broker) = (tiering.clone(), broker.clone());
        let pass = telemetry.spawn(async move { tiering.run_once(&*broker).await });
        if let Err(e) = pass.await {
            metrics::counter!("strata_tier_offload_panics_total").increment(1);
            tracing::error!(error = %e, "offload pass panicked");
        }
    }
}

fn apply_retention(broker: &Broker) {
    let now = broker.clock.now_ms();
    for p in broker.partitions() {
        match p.apply_retention(now) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                topic = p.topic,
                partition = p.index,
                segments = n,
                "retention deleted segments"
            ),
            Err(e) => {
                tracing::error!(topic = p.topic, partition = p.index, error = %e, "retention failed")
            }
        }
        if let Err(e) = p.snapshot_producers() {
            tracing::warn!(topic = p.topic, partition = p.index, error = %e, "producer snapshot failed");
        }
    }
}

/// Raises the open-file limit and returns `max.connections`: as set, or derived from the limit.
/// Both are said in the start-up log.
fn connection_cap(config: &Config) -> usize {
    let settings = &config.broker;
    let limit = accept::raise_open_file_limit();
    let (max, how) = match (settings.max_connections, limit) {
        (n, _) if n >= 0 => (n as usize, "set"),
        (_, Some(limit)) => (
            accept::derived_max_connections(limit.soft, settings.admin_max_connections),
            "derived from the open-file limit",
        ),
        (_, None) => (1024, "open-file limit unknown"),
    };
    match limit {
        Some(l) => tracing::info!(
            open_files_before = l.before,
            open_files = l.soft,
            open_files_hard = l.hard,
            max_connections = max,
            how,
            max_connections_per_ip = settings.max_connections_per_ip,
            admin_max_connections = settings.admin_max_connections,
            "connection limits"
        ),
        None => tracing::warn!(max_connections = max, how, "connection limits"),
    }
    max
}
