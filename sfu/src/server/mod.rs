//! The tokio shell around the engines: it owns the UDP socket, the engine
//! threads, the WebSocket sessions and the HTTP endpoints. Only this module
//! touches sockets or reads the clock.

mod cluster;
pub use cluster::{open_store, redis_store};
mod http;
mod ice_tcp;
mod listener;
mod relay;
mod session;
mod shard;
mod udp;

use cluster::{Backend, NodeIdentity, open_backend, spawn_node_heartbeat};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use control::call_token::CallTokens;
use dashmap::DashMap;
use tokio::net::TcpListener;

use control::lifecycle::{Lifecycle, Phase};

use crate::config::Config;
use crate::metrics::Metrics;

pub use shard::ShardHandle;

/// The open-file limit a production node should have (systemd
/// `LimitNOFILE`); below it, HTTP connections are capped lower.
const MIN_DESCRIPTORS: u64 = 65_536;

/// Who owns a remote address or a local ufrag: the index of an engine shard.
pub type RouteTable = Arc<Routes>;

#[derive(Default)]
pub struct Routes {
    /// Read for each datagram its reader's engine does not own (foldhash:
    /// fast, seeded per map).
    pub by_addr: DashMap<SocketAddr, usize, foldhash::fast::RandomState>,
    pub by_ufrag: DashMap<String, usize, foldhash::fast::RandomState>,
}

/// Shared by every WebSocket session and HTTP handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub tokens: Arc<CallTokens>,
    pub shards: Arc<Vec<ShardHandle>>,
    pub metrics: Arc<Metrics>,
    /// TURN credentials for join info (call API and dev tokens).
    pub turn: Option<Arc<control::turn_issuer::TurnIssuer>>,
    /// Serving, draining or stopping (`Running::drain`).
    pub lifecycle: Arc<Lifecycle>,
    /// This node's name in the registry: call tokens placed on another
    /// node are refused here with `wrong_node`.
    pub node_id: Arc<str>,
    /// The registry as the last heartbeat read it (where `wrong_node`
    /// sends a client; what placement chooses from).
    pub nodes: Arc<control::placement::NodeSnapshot>,
}

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub http_addr: SocketAddr,
    /// Where `/metrics` is served when it has a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    pub udp_addr: SocketAddr,
    pub announced: Vec<SocketAddr>,
    /// The embedded TURN relay, unless disabled.
    pub turn: Option<turn::server::RunningTurn>,
    pub state: AppState,
    /// Pushes still to deliver (flushed by [`Running::drain`]).
    push: Arc<dyn control::ringing::PushSender>,
    shutdown: tokio::sync::watch::Sender<bool>,
    http_task: tokio::task::JoinHandle<()>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every room ended before the deadline.
    Emptied,
    /// The deadline came first: the remaining participants were told
    /// `server_shutdown`.
    DeadlinePassed { rooms: usize },
}

/// After the rooms are closed, how long sockets get to take their last
/// messages and pushes get to finish.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("crypto: {0}")]
    Crypto(String),
    #[error("store: {0}")]
    Store(String),
    #[error("push: {0}")]
    Push(String),
    #[error("TURN: {0}")]
    Turn(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// A secret every development node on the same Redis namespace derives
/// alike: development mode hands tokens to anyone, so it guards nothing;
/// it only lets a development cluster's nodes accept each other's tokens.
fn development_cluster_secret(namespace: &str, what: &str) -> String {
    let input = format!("switchboard development cluster {namespace} {what}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds everything and starts the engine threads and the HTTP server.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with_push(config, None).await
}

/// [`start`], with the push sender given (tests record pushes); `None`: the
/// configured one (the signed webhook, or logging only).
pub async fn start_with_push(
    config: Config,
    push: Option<Arc<dyn control::ringing::PushSender>>,
) -> Result<Running, StartError> {
    let mut config = config;
    if config.dev_token_endpoint {
        // Development mode hands user and call tokens to anyone. Signed with
        // real credentials they would be accepted by every production node
        // sharing them; so it runs only on credentials of its own.
        if !config.api_keys.is_empty() || !config.call_token_secret.is_empty() {
            return Err(StartError::Config(
                "development mode (dev_token_endpoint) refuses to start with API keys or a call-token secret configured: it would hand out tokens signed with them".into(),
            ));
        }
        // `/dev/user-token` signs with a key only this process knows; a
        // development cluster's nodes must verify each other's tokens, so
        // theirs come from the Redis namespace (never a production node's:
        // one with real credentials refuses development mode).
        let secret_for = |what: &str| match &config.redis_url {
            Some(_) => development_cluster_secret(&config.redis_namespace, what),
            None => format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            ),
        };
        config.api_keys.push(control::auth::ApiKey {
            id: "dev".into(),
            secret: secret_for("user tokens"),
            revoked: false,
        });
        if config.redis_url.is_some() {
            config.call_token_secret = secret_for("call tokens");
            if config.turn.secrets.is_empty() {
                config.turn.secrets = vec![secret_for("turn")];
            }
        }
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let secret = if config.call_token_secret.is_empty() {
        // No configured secret: one nobody else knows, for this process only.
        format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )
    } else {
        config.call_token_secret.clone()
    };
    let tokens = Arc::new(CallTokens::new(
        secret.as_bytes(),
        config.call_token_issuer.clone(),
        control::call_token::DEFAULT_TTL,
    ));

    let socket = udp::bind(config.rtc_udp_bind).map_err(|source| StartError::Bind {
        addr: config.rtc_udp_bind,
        source,
    })?;
    let udp_addr = socket.local_addr().map_err(|source| StartError::Bind {
        addr: config.rtc_udp_bind,
        source,
    })?;
    let announced: Vec<SocketAddr> = config
        .effective_announce_ips()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, udp_addr.port()))
        .collect();

    // ICE over TCP, when configured: its port on every announced IP.
    let ice_tcp = match config.rtc_tcp_bind {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let tcp_announced: Vec<SocketAddr> = match ice_tcp.as_ref().map(TcpListener::local_addr) {
        Some(Ok(local)) => config
            .effective_announce_ips()
            .into_iter()
            .map(|ip| SocketAddr::new(ip, local.port()))
            .collect(),
        _ => Vec::new(),
    };

    let routes: RouteTable = Arc::default();
    let socket = Arc::new(socket);
    let (media_signals, media_signals_rx) = tokio::sync::mpsc::unbounded_channel();
    let shards = shard::spawn_all(
        &config,
        &announced,
        &tcp_announced,
        socket.clone(),
        routes.clone(),
        metrics.clone(),
        media_signals,
    )
    .map_err(StartError::Crypto)?;
    let shards = Arc::new(shards);
    if let Some(listener) = ice_tcp {
        tokio::spawn(ice_tcp::serve(
            listener,
            routes.clone(),
            shards.clone(),
            metrics.clone(),
        ));
    }

    let listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.http_listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.http_listen,
        source,
    })?;
    let ops_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr = ops_listener.as_ref().and_then(|l| l.local_addr().ok());
    let (turn, turn_issuer) =
        match relay::start_turn(&config, &announced, &metrics.registry).await? {
            Some((running, issuer)) => (Some(running), Some(Arc::new(issuer))),
            None => (None, None),
        };
    let state = AppState {
        node_id: config.node_name().into(),
        config,
        tokens,
        shards,
        metrics,
        turn: turn_issuer.clone(),
        lifecycle: Arc::default(),
        nodes: Arc::default(),
    };
    let call_metrics = control::metrics::CallMetrics::register(&state.metrics.registry)
        .map_err(|e| StartError::Store(e.to_string()))?
        .with_rollout_flag(state.config.rollout_metrics_flag.clone());
    let push_metrics = control::push::metrics::PushMetrics::register(&state.metrics.registry)
        .map_err(|e| StartError::Push(e.to_string()))?;
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let backend = open_backend(&state.config, &state.metrics.registry, shutdown_rx.clone())?;
    let fallback_region = match state.config.placement_fallback_region.as_str() {
        "" => state.config.region.clone(),
        region => region.to_string(),
    };
    // Rooms are placed only in a cluster: a node on its own hosts them all,
    // and its clients join where they reach its API (behind whatever proxy
    // the operator runs, which `public_url` may not name).
    let placer = state.config.redis_url.is_some().then(|| {
        let placer = control::placement::Placer::new(state.nodes.clone(), fallback_region)
            .with_metrics(&state.metrics.registry)
            .with_registry(backend.nodes.clone());
        Arc::new(placer)
    });
    let control = start_control(
        &state.config,
        placer,
        state.tokens.clone(),
        call_metrics,
        push_metrics,
        push,
        turn_issuer,
        state.lifecycle.clone(),
        backend,
    )?;
    let recovered = control
        .service
        .recover(
            unix_millis(),
            state.config.reconnect_grace().as_millis() as u64,
        )
        .map_err(|e| StartError::Store(e.to_string()))?;
    if recovered > 0 {
        let requeued = control.events.requeue_unacknowledged();
        tracing::info!(
            calls = recovered,
            unacknowledged_rings = requeued,
            "recovered live calls from the store"
        );
    }
    spawn_call_timers(control.service.clone(), shutdown_rx.clone());
    spawn_flag_refresh(control.service.clone(), shutdown_rx.clone());
    spawn_node_heartbeat(
        control.nodes.clone(),
        NodeIdentity::of(&state.config, http_addr, &announced, &control),
        state.clone(),
        shutdown_rx.clone(),
    );
    if !state.config.event_webhooks.is_empty() {
        let metrics = control::webhooks::delivery::Metrics::register(&state.metrics.registry)
            .map_err(|e| StartError::Store(e.to_string()))?;
        let settings = control::webhooks::delivery::Settings {
            max_age: Duration::from_secs(state.config.event_webhook_max_age_seconds),
            max_queued: state.config.event_webhook_max_queued,
            ..control::webhooks::delivery::Settings::new(event_endpoints(&state.config))
        };
        tokio::spawn(control::webhooks::delivery::run(
            control.service.store.clone(),
            settings,
            Some(Arc::new(metrics)),
            shutdown_rx.clone(),
        ));
    }
    spawn_room_reaper(control.service.clone(), state.clone(), shutdown_rx.clone());
    spawn_ack_checks(control.events.clone(), shutdown_rx.clone());
    spawn_media_signals(
        control.service.clone(),
        state.metrics.clone(),
        media_signals_rx,
    );
    let push = control.events.push.clone();
    let app = http::router(state.clone())
        .merge(control::api::router(control))
        .fallback(http::no_such_route)
        .method_not_allowed_fallback(http::method_not_allowed);
    let descriptors = listener::raise_descriptor_limit();
    let limits = listener::ConnectionLimits::within_descriptors(
        state.config.max_http_connections,
        state.config.max_http_connections_per_ip,
        descriptors,
    );
    state.metrics.open_files_limit.set(descriptors as i64);
    let gauge = &state.metrics.http_connection_limit;
    gauge.with_label_values(&["total"]).set(limits.total as i64);
    gauge
        .with_label_values(&["per_ip"])
        .set(limits.per_ip as i64);
    if descriptors < MIN_DESCRIPTORS {
        tracing::warn!(
            descriptors,
            minimum = MIN_DESCRIPTORS,
            http_connections = limits.total,
            "the open-file limit is low; HTTP connections are capped to fit it (raise LimitNOFILE)"
        );
    }
    if let Some(ops) = ops_listener {
        let ops_limits = listener::ConnectionLimits {
            total: 64,
            per_ip: 64,
        };
        tokio::spawn(listener::serve(
            ops,
            http::ops_router(state.clone()),
            ops_limits,
            state.metrics.clone(),
            shutdown_rx.clone(),
        ));
    }
    let http_task = tokio::spawn(listener::serve(
        listener,
        app,
        limits,
        state.metrics.clone(),
        shutdown_rx,
    ));
    Ok(Running {
        http_addr,
        metrics_addr,
        udp_addr,
        announced,
        turn,
        state,
        push,
        shutdown,
        http_task,
    })
}

/// Call control on its backend: auth, the call service, the API state.
#[allow(clippy::too_many_arguments)] // the composition root: one argument per part
fn start_control(
    config: &Config,
    placer: Option<Arc<control::placement::Placer>>,
    tokens: Arc<CallTokens>,
    metrics: control::metrics::CallMetrics,
    push_metrics: control::push::metrics::PushMetrics,
    push: Option<Arc<dyn control::ringing::PushSender>>,
    turn: Option<Arc<control::turn_issuer::TurnIssuer>>,
    lifecycle: Arc<Lifecycle>,
    backend: Backend,
) -> Result<control::api::ControlState, StartError> {
    let Backend {
        store,
        nodes,
        sockets,
        hub,
        shared_limits,
        push_claims,
        ack_deadlines,
    } = backend;
    let push: Arc<dyn control::ringing::PushSender> = match push {
        Some(push) => push,
        None => push_dispatcher(
            config,
            store.clone(),
            push_claims,
            shared_limits.clone(),
            push_metrics,
        )?,
    };
    let mut events = control::ringing::HubRinger::new(hub, store.clone(), push)
        .with_event_webhooks(event_endpoints(config));
    if let Some(sockets) = sockets {
        events = events.with_socket_directory(sockets);
    }
    if let Some(pending) = ack_deadlines {
        events = events.with_ack_deadlines(pending);
    }
    let events = Arc::new(events);
    let service = control::service::CallService {
        store,
        ringer: events.clone(),
        metrics: Some(Arc::new(metrics)),
        timeouts: control::call::Timeouts {
            ring_ms: config.ring_timeout_seconds * 1000,
            connect_ms: config.connect_timeout_seconds * 1000,
        },
        max_ringing_devices: config.max_ringing_devices,
        event_webhooks: event_endpoints(config),
        placer,
        flags: Default::default(),
        min_app_version: config.min_app_version.clone(),
        video_fallback: config.video_fallback,
    };
    let (requests, creates, rings) = (
        control::rate_limit::Rate::per_second(config.api_requests_per_second),
        control::rate_limit::Rate::per_minute(config.call_creates_per_minute),
        control::rate_limit::Rate::per_minute(config.calls_to_one_user_per_minute),
    );
    let limits = match shared_limits {
        Some(buckets) => control::api::ApiLimits::shared(requests, creates, rings, buckets),
        None => control::api::ApiLimits::new(requests, creates, rings),
    };
    Ok(control::api::ControlState {
        auth: Arc::new(control::auth::Authenticator::new(
            config.api_keys.clone(),
            control::auth::DEFAULT_MAX_USER_TOKEN_TTL,
        )),
        service: Arc::new(service),
        tokens,
        limits: Arc::new(limits),
        events,
        nodes,
        turn,
        lifecycle,
    })
}

/// The data directory, created for this user only (0700). An existing one is
/// left as the operator made it, with a warning if others can read it.
fn create_private_dir(dir: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let failed = |e: std::io::Error| StartError::Store(format!("{}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let mode = std::fs::metadata(dir).map_err(failed)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "the data directory is readable by other users; it holds push tokens (chmod 700)");
    }
    Ok(())
}

/// The push providers the config names, behind one dispatcher; none: pushes
/// are logged.
fn push_dispatcher(
    config: &Config,
    store: Arc<dyn control::store::Store>,
    claims: Option<Arc<dyn control::push::dispatch::PushClaims>>,
    shared_buckets: Option<Arc<dyn control::rate_limit::SharedBuckets>>,
    metrics: control::push::metrics::PushMetrics,
) -> Result<Arc<dyn control::ringing::PushSender>, StartError> {
    use control::push::dispatch;
    let providers = push_providers(config).map_err(StartError::Push)?;
    if providers.apns.is_none() && providers.fcm.is_none() && providers.webhook.is_none() {
        return Ok(Arc::new(control::ringing::LoggingPushSender));
    }
    let dispatch_config = dispatch::DispatchConfig {
        per_device: control::rate_limit::Rate::per_minute(config.push_per_device_per_minute),
        event_webhooks: event_endpoints(config),
        claims,
        shared_buckets,
        ..Default::default()
    };
    Ok(Arc::new(dispatch::PushDispatcher::spawn(
        providers,
        dispatch_config,
        store,
        Some(Arc::new(metrics)),
    )))
}

/// The push providers the config names (none configured: all `None`).
/// The server's dispatcher, `switchboard doctor` and `push-test` use these.
pub fn push_providers(config: &Config) -> Result<control::push::dispatch::Providers, String> {
    use control::push::{apns, dispatch, fcm, webhook};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let extra_root = config
        .push_extra_root_cert
        .as_deref()
        .map(read)
        .transpose()?;
    let mut providers = dispatch::Providers::default();
    if let Some(a) = &config.apns {
        let client = apns::ApnsClient::new(apns::ApnsConfig {
            key_pem: read(&a.key_file)?,
            key_id: a.key_id.clone(),
            team_id: a.team_id.clone(),
            default_bundle_id: a.bundle_id.clone(),
            production_url: a.production_url.clone(),
            sandbox_url: a.sandbox_url.clone(),
            extra_root_pem: extra_root.clone(),
        });
        providers.apns = Some(client.map_err(|e| format!("APNs: {e}"))?);
    }
    if let Some(f) = &config.fcm {
        let key = String::from_utf8(read(&f.service_account_file)?)
            .map_err(|_| "FCM service account file is not UTF-8".to_string())?;
        let client = fcm::FcmClient::new(fcm::FcmConfig {
            service_account_json: key,
            project_id: f.project_id.clone(),
            base_url: f.url.clone(),
            extra_root_pem: extra_root.clone(),
        });
        providers.fcm = Some(client.map_err(|e| format!("FCM: {e}"))?);
    }
    if let Some(url) = &config.push_webhook_url {
        let client = webhook::WebhookClient::new(url.clone(), config.push_webhook_secret.clone());
        providers.webhook = Some(client.map_err(|e| format!("push webhook: {e}"))?);
    }
    Ok(providers)
}

/// Where call-event webhooks go.
fn event_endpoints(config: &Config) -> Vec<control::webhooks::Endpoint> {
    config
        .event_webhooks
        .iter()
        .map(|w| control::webhooks::Endpoint {
            url: w.url.clone(),
            secrets: w.secrets.clone(),
        })
        .collect()
}

/// The server owns the ring and connect timers: every 250 ms, due ones fire.
fn spawn_call_timers(
    service: Arc<control::service::CallService>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let service = service.clone();
            let now = unix_millis();
            match tokio::task::spawn_blocking(move || service.fire_timers(now)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "call timers"),
                Err(e) => tracing::error!(error = %e, "call timer task"),
            }
        }
    });
}

/// Reads the feature flags every `FLAG_REFRESH`, so a change made on
/// another node reaches this node's events sockets (and new calls) within
/// that.
fn spawn_flag_refresh(
    service: Arc<control::service::CallService>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(control::service::FLAG_REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let service = service.clone();
            let read = tokio::task::spawn_blocking(move || {
                service.flags.refresh(&*service.store).map(drop)
            });
            if let Ok(Err(e)) = read.await {
                tracing::warn!(error = %e, "feature flags not read: acting on the last ones read");
            }
        }
    });
}

/// Calls whose room is on a node that left the registry [`REAP_AFTER`]
/// ago are told their media is lost (`CallService::reap_rooms_of_gone_nodes`):
/// their people must rejoin (a fresh token moves the room) or the call
/// fails. Reading every live call costs, so the store is scanned only when
/// a node has left, and once [`REAP_AFTER`] after start (for nodes that
/// died while this one was down). Nothing is judged before this node's own
/// heartbeat has read the registry.
fn spawn_room_reaper(
    service: Arc<control::service::CallService>,
    state: AppState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use std::collections::{HashMap, HashSet};
    use tokio::time::Instant;
    tokio::spawn(async move {
        let mut listed: HashSet<String> = HashSet::new();
        let mut left_at: HashMap<String, Instant> = HashMap::new();
        let mut first_scan = Some(Instant::now() + REAP_AFTER);
        let mut tick = tokio::time::interval(REAP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let live: HashSet<String> = state.nodes.all().into_iter().map(|n| n.node_id).collect();
            if !live.contains(&*state.node_id) {
                continue;
            }
            let now = Instant::now();
            for gone in listed.difference(&live) {
                left_at.entry(gone.clone()).or_insert(now);
            }
            left_at.retain(|node, _| !live.contains(node));
            listed = live.clone();
            let due: HashSet<String> = left_at
                .iter()
                .filter(|(_, at)| now.duration_since(**at) >= REAP_AFTER)
                .map(|(node, _)| node.clone())
                .collect();
            let everything = first_scan.is_some_and(|at| now >= at);
            if due.is_empty() && !everything {
                continue;
            }
            let service = service.clone();
            let gone = due.clone();
            let reaped = tokio::task::spawn_blocking(move || {
                service.reap_rooms_of_gone_nodes(unix_millis(), |node| {
                    !live.contains(node) && (everything || gone.contains(node))
                })
            })
            .await;
            match reaped {
                Ok(Ok(_)) => {
                    left_at.retain(|node, _| !due.contains(node));
                    first_scan = None;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "room reaper (tried again next tick)"),
                Err(e) => tracing::error!(error = %e, "room reaper task"),
            }
        }
    });
}

const REAP_EVERY: Duration = Duration::from_secs(2);
/// How long a room's node must be gone from the registry (which itself
/// forgets a dead node within 6 s) before its calls are told.
const REAP_AFTER: Duration = Duration::from_secs(4);

/// Rings not acknowledged in time fall back to push (checked every 100 ms).
fn spawn_ack_checks(
    events: Arc<control::ringing::HubRinger>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let events = events.clone();
            let _ =
                tokio::task::spawn_blocking(move || events.check_acks(std::time::Instant::now()))
                    .await;
        }
    });
}

/// Media connected / left, from the engines into the call state machine.
/// Rooms without a call (development tokens) are ignored.
fn spawn_media_signals(
    service: Arc<control::service::CallService>,
    metrics: Arc<Metrics>,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<shard::MediaSignal>,
) {
    tokio::spawn(async move {
        // Signals the store could not take (Redis down), oldest first: a
        // participant who left during an outage must not stay `connected`
        // (and busy) for ever. Each keeps the time it happened, so the
        // call's timers count from then.
        let mut waiting: std::collections::VecDeque<(shard::MediaSignal, u64)> = Default::default();
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Some(signal) => waiting.push_back((signal, unix_millis())),
                    None => break,
                },
                _ = tokio::time::sleep(MEDIA_SIGNAL_RETRY), if !waiting.is_empty() => {}
            }
            // In order: a call's `left` never overtakes its `connected`.
            while let Some((signal, at)) = waiting.front().cloned() {
                let service = service.clone();
                let applied =
                    tokio::task::spawn_blocking(move || apply_media_signal(&service, signal, at))
                        .await
                        .unwrap_or(true);
                if !applied {
                    break;
                }
                waiting.pop_front();
            }
            while waiting.len() > MAX_WAITING_MEDIA_SIGNALS {
                if let Some((signal, _)) = waiting.pop_front() {
                    let (shard::MediaSignal::Connected(m) | shard::MediaSignal::Left(m)) = &signal;
                    tracing::warn!(call_id = %m.call_id, user_id = %m.user_id, device_id = %m.device.device_id, platform = %m.device.platform, ?signal, "media signal dropped: too many wait for the store");
                    metrics.media_signals_dropped.inc();
                }
            }
            metrics.media_signals_waiting.set(waiting.len() as i64);
        }
    });
}

/// How often signals waiting for the store are tried again.
const MEDIA_SIGNAL_RETRY: Duration = Duration::from_millis(500);
/// Signals kept while the store does not answer (a few hundred bytes
/// each): an outage of minutes on a busy node, then the oldest go.
const MAX_WAITING_MEDIA_SIGNALS: usize = 10_000;

/// Feeds one SFU signal into its call; false if the store did not answer
/// (try again later). Other failures are logged and the signal is done.
fn apply_media_signal(
    service: &control::service::CallService,
    signal: shard::MediaSignal,
    now: u64,
) -> bool {
    use control::service::ServiceError;
    use control::store::StoreError;
    let (member, connected) = match signal {
        shard::MediaSignal::Connected(member) => (member, true),
        shard::MediaSignal::Left(member) => (member, false),
    };
    let crate::engine::Member {
        call_id,
        user_id,
        device,
    } = member;
    let (device_id, platform) = (&device.device_id, &device.platform);
    let span = if connected {
        control::call_span!("media.connected", &call_id, user_id = %user_id, device_id = %device_id, platform = %platform)
    } else {
        control::call_span!("media.left", &call_id, user_id = %user_id, device_id = %device_id, platform = %platform)
    };
    let _in_span = span.entered();
    let result = service.update(&call_id, |c, fx| {
        if connected {
            c.media_connected(&user_id, now, fx);
        } else {
            c.media_left(&user_id, now, fx);
        }
        Ok(())
    });
    match result {
        Ok((call, ())) => {
            tracing::info!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform = %platform, connected, state = ?call.state, "media signal")
        }
        Err(ServiceError::NotFound) => {}
        Err(ServiceError::Store(StoreError::Unavailable(e))) => {
            tracing::warn!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform = %platform, connected, error = %e, "media signal waits: the store is unavailable");
            return false;
        }
        Err(e) => {
            tracing::warn!(call_id = %call_id, user_id = %user_id, device_id = %device_id, platform = %platform, error = %e, "media signal")
        }
    }
    true
}

use control::unix_millis;

impl Running {
    /// The graceful stop (SIGTERM): `/readyz` fails and no new calls or
    /// rooms are placed here; live rooms continue until they end or
    /// `deadline` passes; then every participant gets `left`
    /// `server_shutdown` and its socket closes (1001), as do the devices'
    /// events sockets; pushes still under way are given [`FLUSH_LIMIT`];
    /// then the process may exit. Dropping the future midway (a second
    /// signal) leaves the node as it is.
    pub async fn drain(self, deadline: Duration) -> DrainEnd {
        let started = tokio::time::Instant::now();
        self.state.lifecycle.advance(Phase::Draining);
        for shard in self.state.shards.iter() {
            shard.drain();
        }
        tracing::info!(
            rooms = self.rooms(),
            deadline_seconds = deadline.as_secs(),
            "draining: no new calls; live ones continue"
        );
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let end = loop {
            tick.tick().await;
            let rooms = self.rooms();
            if rooms == 0 {
                break DrainEnd::Emptied;
            }
            if started.elapsed() >= deadline {
                break DrainEnd::DeadlinePassed { rooms };
            }
        };
        tracing::info!(?end, "drain over: closing every connection");
        for shard in self.state.shards.iter() {
            shard.shut_down();
        }
        let flush_by = tokio::time::Instant::now() + FLUSH_LIMIT;
        // Participants first: each takes its `left` and close frame (the
        // sessions close themselves)...
        while self.participants() > 0 && tokio::time::Instant::now() < flush_by {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let written_by = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.state.metrics.signaling_connections.get() > 0
            && tokio::time::Instant::now() < written_by
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...then whatever is left (unjoined sockets, devices' events).
        self.state.lifecycle.advance(Phase::Stopping);
        while self.push.unsettled() > 0 && tokio::time::Instant::now() < flush_by {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let unsent = self.push.unsettled();
        if unsent > 0 {
            tracing::warn!(pushes = unsent, "pushes still unsent at exit");
        }
        self.shutdown().await;
        end
    }

    /// Rooms on every shard.
    fn rooms(&self) -> usize {
        self.state.shards.iter().map(|s| s.health.rooms()).sum()
    }

    fn participants(&self) -> usize {
        self.state
            .shards
            .iter()
            .map(|s| s.health.participants())
            .sum()
    }

    /// Stops accepting connections and stops the engines.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(turn) = self.turn {
            turn.shutdown();
        }
        for shard in self.state.shards.iter() {
            shard.stop();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http_task).await;
    }
}
