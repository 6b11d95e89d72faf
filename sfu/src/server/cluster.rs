//! How this node joins the others: the backend call control runs on (one
//! Redis shared by every node, or the embedded SQLite store for a node on
//! its own) and the node's heartbeat into the registry. The one place the
//! cluster is wired; `control::store::RedisStore` holds what is shared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{AppState, StartError, create_private_dir};
use crate::config::Config;
use control::unix_millis;

/// Where call control keeps what it shares (or, on one node, keeps to
/// itself): the store, the node registry, the directory of device sockets.
pub(super) struct Backend {
    pub(super) store: Arc<dyn control::store::Store>,
    pub(super) nodes: Arc<dyn control::nodes::NodeRegistry>,
    /// Sockets on other nodes; `None` on a single node.
    pub(super) sockets: Option<Arc<dyn control::ringing::SocketDirectory>>,
    /// This node's device sockets.
    pub(super) hub: Arc<control::ringing::DeviceHub>,
    /// Rate-limit buckets every node shares; `None` on a single node.
    pub(super) shared_limits: Option<Arc<dyn control::rate_limit::SharedBuckets>>,
    /// Push de-duplication every node shares; `None` on a single node.
    pub(super) push_claims: Option<Arc<dyn control::push::dispatch::PushClaims>>,
    /// Rings waiting for their ack, shared; `None`: this node's memory.
    pub(super) ack_deadlines: Option<Arc<dyn control::ringing::AckDeadlines>>,
}

/// A cluster shares one Redis for calls, the node registry and where device
/// sockets are (this node's relay listener runs until `shutdown`); one node
/// keeps calls in SQLite and is its own registry.
pub(super) fn open_backend(
    config: &Config,
    registry: &prometheus::Registry,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Backend, StartError> {
    let hub = Arc::new(control::ringing::DeviceHub::default());
    if config.redis_url.is_none() {
        create_private_dir(&config.data_dir)?;
        let sqlite = sqlite_store(config).map_err(StartError::Store)?;
        return Ok(Backend {
            store: Arc::new(sqlite),
            nodes: Arc::new(control::nodes::LocalNodes::default()),
            sockets: None,
            hub,
            shared_limits: None,
            push_claims: None,
            ack_deadlines: None,
        });
    };
    let metrics = control::store::RedisMetrics::register(registry)
        .map_err(|e| StartError::Store(e.to_string()))?;
    let redis = Arc::new(
        redis_store(config)
            .map_err(StartError::Store)?
            .with_metrics(metrics),
    );
    let node_id = config.node_name();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    redis.spawn_relay_listener(&node_id, hub.clone(), stop.clone());
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let sockets = control::store::RedisSockets {
        store: redis.clone(),
        node_id,
    };
    Ok(Backend {
        store: redis.clone(),
        nodes: redis.clone(),
        sockets: Some(Arc::new(sockets)),
        hub,
        shared_limits: Some(redis.clone()),
        push_claims: Some(redis.clone()),
        ack_deadlines: Some(redis),
    })
}

/// The store the config names, without a node's other machinery (relay,
/// registry): what `switchboard push-test` reads devices from.
pub fn open_store(config: &Config) -> Result<Arc<dyn control::store::Store>, String> {
    Ok(match config.redis_url {
        Some(_) => Arc::new(redis_store(config)?),
        None => Arc::new(sqlite_store(config)?),
    })
}

fn sqlite_store(config: &Config) -> Result<control::store::SqliteStore, String> {
    control::store::SqliteStore::open(&config.data_dir.join("control.db"))
        .map_err(|e| e.to_string())
}

/// Connects (and pings) the cluster's Redis; `redis_url` must be set.
pub fn redis_store(config: &Config) -> Result<control::store::RedisStore, String> {
    let url = config.redis_url.as_deref().unwrap_or_default();
    let roots = config
        .redis_ca_file
        .as_ref()
        .map(|path| {
            std::fs::read(path).map_err(|e| format!("redis_ca_file {}: {e}", path.display()))
        })
        .transpose()?;
    control::store::RedisStore::connect_trusting(url, &config.redis_namespace, roots.as_deref())
        .map_err(|e| e.to_string())
}

/// What this node tells the registry about itself, fixed at start.
pub(super) struct NodeIdentity {
    node_id: String,
    region: String,
    public_url: String,
    media_addresses: Vec<String>,
    turn_urls: Vec<String>,
    started_at: u64,
}

impl NodeIdentity {
    pub(super) fn of(
        config: &Config,
        http_addr: SocketAddr,
        announced: &[SocketAddr],
        control: &control::api::ControlState,
    ) -> NodeIdentity {
        let public_url = if config.public_url.is_empty() {
            let ip = announced.first().map_or(http_addr.ip(), |a| a.ip());
            format!("http://{}", SocketAddr::new(ip, http_addr.port()))
        } else {
            config.public_url.clone()
        };
        NodeIdentity {
            node_id: config.node_name(),
            region: config.region.clone(),
            public_url,
            media_addresses: announced.iter().map(ToString::to_string).collect(),
            turn_urls: control
                .turn
                .as_ref()
                .map(|t| t.urls.clone())
                .unwrap_or_default(),
            started_at: unix_millis(),
        }
    }
}

/// Heartbeats this node into the registry every
/// [`control::nodes::HEARTBEAT_INTERVAL_MS`] (state and load as they are
/// now); leaves it on shutdown. A Redis outage only delays a beat.
pub(super) fn spawn_node_heartbeat(
    nodes: Arc<dyn control::nodes::NodeRegistry>,
    me: NodeIdentity,
    state: AppState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use control::nodes::{
        HEARTBEAT_INTERVAL_MS, HEARTBEAT_TTL_MS, NodeLoad, NodeRecord, NodeState,
    };
    let sum = |gauge: &prometheus::IntGaugeVec| -> u64 {
        use prometheus::core::Collector;
        gauge
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value().max(0.0) as u64)
            .sum()
    };
    let listed = prometheus::IntGauge::new(
        "switchboard_nodes",
        "Nodes in the registry as this node last read it (itself included)",
    )
    .expect("a valid metric");
    if let Err(e) = state.metrics.registry.register(Box::new(listed.clone())) {
        tracing::warn!(error = %e, "switchboard_nodes not registered");
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let now = unix_millis();
            let record = NodeRecord {
                node_id: me.node_id.clone(),
                region: me.region.clone(),
                public_url: me.public_url.clone(),
                media_addresses: me.media_addresses.clone(),
                turn_urls: me.turn_urls.clone(),
                state: if state.lifecycle.is_serving() {
                    NodeState::Active
                } else {
                    NodeState::Draining
                },
                load: NodeLoad {
                    rooms: sum(&state.metrics.rooms),
                    participants: sum(&state.metrics.participants),
                },
                started_at: me.started_at,
                heartbeat_at: now,
            };
            let (registry, id) = (nodes.clone(), me.node_id.clone());
            let beat = tokio::task::spawn_blocking(move || {
                registry.heartbeat(&record, now, HEARTBEAT_TTL_MS)?;
                Ok::<_, control::store::StoreError>((
                    registry.nodes(now)?,
                    registry.drain_asked(&id)?,
                ))
            });
            match beat.await {
                Ok(Ok((live, asked))) => {
                    listed.set(live.len() as i64);
                    state.nodes.replace(live);
                    // A request made before this process started was for
                    // the drain that ended its predecessor.
                    if asked.is_some_and(|at| at >= me.started_at) && state.lifecycle.is_serving() {
                        tracing::info!(node_id = %me.node_id, "an operator asked this node to drain");
                        state.lifecycle.ask_to_drain();
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, node_id = %me.node_id, "node heartbeat"),
                Err(_) => {}
            }
        }
        let node_id = me.node_id.clone();
        let _ = tokio::task::spawn_blocking(move || nodes.leave(&node_id)).await;
    });
}
