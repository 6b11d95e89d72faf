//! The server's configuration: one serde struct, every field defaulted (so
//! `switchboard` runs with no file), loaded from an optional TOML file, then
//! `SWITCHBOARD_*` environment variables, validated once at start.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP: the signaling WebSocket (`/v1/rtc`), `/metrics`, `/healthz`.
    pub http_listen: SocketAddr,
    /// Serve `/metrics` (with `/healthz` and `/readyz`) here instead of on
    /// `http_listen`, for deployments that expose the API port publicly.
    pub metrics_listen: Option<SocketAddr>,
    /// The one UDP port all participants' media uses.
    pub rtc_udp_bind: SocketAddr,
    /// ICE over TCP (RFC 6544, RFC 4571 framing): a TCP port announced as
    /// a passive candidate on every announced IP, for clients whose UDP is
    /// blocked (they connect without TURN). Off when unset.
    pub rtc_tcp_bind: Option<SocketAddr>,
    /// IPs announced as host candidates. Empty: the address of the default
    /// route's interface (or 127.0.0.1 without one). Behind 1:1 NAT, list the
    /// public IPs here.
    pub announce_ips: Vec<IpAddr>,
    /// The announced IPs are the public side of a 1:1 NAT (a cloud VM's
    /// public IP, forwarded to this host's address): not addresses of this
    /// host. `switchboard doctor` then does not require them to be local.
    pub announce_behind_nat: bool,
    /// Engine threads; rooms are sharded across them. 0: one per core.
    pub engine_threads: usize,
    /// Secret for HS256 call tokens. Empty: a random one per process (then
    /// only this process's dev endpoint can mint tokens).
    pub call_token_secret: String,
    pub call_token_issuer: String,
    /// Largest signaling frame accepted (group SDPs are large).
    pub max_message_bytes: usize,
    /// A participant whose path or WebSocket broke keeps its place this long.
    pub reconnect_grace_seconds: u64,
    pub keyframe_request_interval_ms: u64,
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    /// Messages per second a signaling connection may send (burst: twice that).
    pub signaling_rate_per_second: u32,
    /// HTTP connections (API, WebSockets) open at once, and from one IP;
    /// lowered at start to fit half the open-file limit.
    pub max_http_connections: usize,
    pub max_http_connections_per_ip: usize,
    /// Ignore clients' ICE candidates for loopback, private, CGNAT and
    /// link-local addresses (the server then never checks them). Off by
    /// default: self-hosted LAN deployments connect over them.
    pub deny_private_candidates: bool,
    /// Estimate each subscriber's downlink (str0m's transport-wide
    /// congestion control, with probing) and forward each video track the
    /// simulcast layer that fits it, pausing video a downlink cannot carry.
    /// Off: layers follow what subscribers ask for alone.
    pub downlink_estimation: bool,
    /// Send forwarded media through the server's own SRTP egress (each
    /// copy sealed by the server with the subscriber connection's keys)
    /// rather than str0m's per-packet write path. Ignored with
    /// `downlink_estimation`, whose pacer and probes are str0m's. On by
    /// default: 1.4-1.5x the video tracks per core (BENCHMARKS.md).
    pub own_egress: bool,
    /// Development only: `POST /dev/token` mints a call token for any room,
    /// unauthenticated. Off unless set; call creation replaces it.
    pub dev_token_endpoint: bool,
    /// Development only, with `dev_token_endpoint`: the Capacitor package
    /// (`native/capacitor`, built with `npm run build`) whose demo page is
    /// served at `/demo/`. Default: `native/capacitor` if it exists here.
    pub dev_demo_dir: Option<std::path::PathBuf>,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// Where traces go: an OTLP/HTTP collector's base URL (e.g.
    /// `http://otel-collector:4318`; spans are posted to `/v1/traces`).
    /// Unset: no traces are exported. One trace per call
    /// (`control::call_trace`).
    pub otlp_endpoint: Option<String>,
    /// The share of calls traced, 0.0-1.0, decided by trace id (so every
    /// node keeps the same calls whole). Default 1.0.
    pub trace_sample_ratio: f64,
    /// Where the embedded store keeps its file (`control.db`).
    pub data_dir: std::path::PathBuf,
    /// The store every node of a cluster shares (`redis://host:port/db`, or
    /// `redis+sentinel://s1:26379,s2:26379/primary-name/db` to follow the
    /// primary Redis Sentinel names). Unset: the embedded SQLite store in
    /// `data_dir`.
    pub redis_url: Option<String>,
    /// PEM certificates to trust for a `rediss://` `redis_url` (a Redis
    /// with a private CA); unset: the system's roots.
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Start of every Redis key (as the hash tag `{namespace}`), so several
    /// deployments can share one Redis.
    pub redis_namespace: String,
    /// This node's name in the node registry. Empty: the host name.
    pub node_id: String,
    /// This node's region (room placement prefers the callers' region).
    pub region: String,
    /// Where rooms go when no region of a call's people has an active
    /// node. Empty: this node's `region`.
    pub placement_fallback_region: String,
    /// Where clients reach this node (`https://sfu-1.example.com`). Empty:
    /// `http://<first announced IP>:<HTTP port>`.
    pub public_url: String,
    /// API keys of the app backends (`[[api_keys]] id, secret, revoked`).
    pub api_keys: Vec<control::auth::ApiKey>,
    /// How long callees ring.
    pub ring_timeout_seconds: u64,
    /// From accept to connected media.
    pub connect_timeout_seconds: u64,
    /// After SIGTERM, how long live calls may continue before the node
    /// closes them and exits (`Running::drain`).
    pub drain_timeout_seconds: u64,
    /// Devices rung per callee (most recently seen first).
    pub max_ringing_devices: usize,
    /// Devices on an older app (their registered `appVersion`, dotted)
    /// get `call.unsupported` instead of a ring.
    pub min_app_version: Option<String>,
    /// A video call to a device the flags keep from video: `audio` (the
    /// call becomes audio) or `refuse` (that device is not rung).
    pub video_fallback: control::service::VideoFallback,
    /// The one flag whose cohorts (on / off for the user on the device)
    /// split the rollout metrics (`deploy/ROLLOUT.md`); none: not split.
    pub rollout_metrics_flag: Option<String>,
    /// Rate limits of the call API (429 with Retry-After beyond them).
    pub call_creates_per_minute: u32,
    pub calls_to_one_user_per_minute: u32,
    pub api_requests_per_second: u32,
    /// APNs token auth (`[apns]`): iOS devices are pushed directly.
    pub apns: Option<ApnsSettings>,
    /// FCM HTTP v1 (`[fcm]`): Android devices are pushed directly.
    pub fcm: Option<FcmSettings>,
    /// Pushes for platforms without their provider go as signed webhooks to
    /// the app's backend (which sends APNs / FCM itself). No provider at
    /// all: pushes are only logged.
    pub push_webhook_url: Option<String>,
    pub push_webhook_secret: String,
    /// A PEM root certificate trusted for APNs / FCM besides the built-in
    /// ones (an egress proxy's CA; tests point it at their fake servers').
    pub push_extra_root_cert: Option<std::path::PathBuf>,
    /// Ring pushes per device per minute; more are dropped and counted.
    pub push_per_device_per_minute: u32,
    /// The embedded TURN relay (`[turn]`).
    pub turn: TurnSettings,
    /// Call-event webhooks to the app backend (`[[event_webhooks]] url,
    /// secrets`; `control/WEBHOOKS.md`).
    pub event_webhooks: Vec<EventWebhookSettings>,
    /// Undelivered call events are dropped after this long (counted).
    pub event_webhook_max_age_seconds: u64,
    /// Queued call-event deliveries kept at most (the oldest beyond are
    /// dropped, counted).
    pub event_webhook_max_queued: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventWebhookSettings {
    pub url: String,
    /// `whsec_<base64>` (Standard Webhooks); each signs every delivery, so
    /// a new one can be added before the old is removed.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnSettings {
    pub enabled: bool,
    pub udp_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    /// `turns:` needs a certificate; without one there is no TLS listener.
    pub tls_listen: SocketAddr,
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Host in the `turn:` / `turns:` URLs handed to clients (TLS clients
    /// check the certificate against it). Empty: the first announced IP.
    pub public_host: String,
    /// REST API secrets; the first mints, all verify (rotation). Empty: a
    /// random one per process.
    pub secrets: Vec<String>,
    pub realm: String,
    pub credential_ttl_seconds: u64,
    /// An allocation ends this long after it was made, however refreshed.
    pub max_allocation_lifetime_seconds: u64,
    pub allocations_per_user: usize,
    pub max_allocations: usize,
    /// Per allocation, each direction; 0: no cap.
    pub bandwidth_per_allocation_kbps: u64,
    /// Peers besides this SFU that clients may relay to (CIDRs). Loopback,
    /// private, CGNAT, link-local and multicast addresses stay denied unless
    /// an entry lies within them.
    pub allowed_peers: Vec<ipnet::IpNet>,
}

impl Default for TurnSettings {
    fn default() -> Self {
        TurnSettings {
            enabled: true,
            udp_listen: Some("0.0.0.0:3478".parse().expect("valid literal")),
            tcp_listen: Some("0.0.0.0:3478".parse().expect("valid literal")),
            tls_listen: "0.0.0.0:5349".parse().expect("valid literal"),
            tls_cert_file: None,
            tls_key_file: None,
            public_host: String::new(),
            secrets: Vec::new(),
            realm: "switchboard".into(),
            credential_ttl_seconds: 600,
            max_allocation_lifetime_seconds: 4 * 3600,
            allocations_per_user: 10,
            max_allocations: 10_000,
            bandwidth_per_allocation_kbps: 10_000,
            allowed_peers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    /// The `.p8` key from the Apple developer account.
    pub key_file: std::path::PathBuf,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (VoIP topic: `<bundle_id>.voip`), for devices
    /// that registered none.
    pub bundle_id: String,
    #[serde(default = "apns_production_url")]
    pub production_url: String,
    #[serde(default = "apns_sandbox_url")]
    pub sandbox_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    /// The service account's JSON key file (its `token_uri` is used).
    pub service_account_file: std::path::PathBuf,
    /// Defaults to the key file's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default = "fcm_url")]
    pub url: String,
}

fn apns_production_url() -> String {
    control::push::apns::PRODUCTION_URL.into()
}

fn apns_sandbox_url() -> String {
    control::push::apns::SANDBOX_URL.into()
}

fn fcm_url() -> String {
    control::push::fcm::PRODUCTION_URL.into()
}

impl Default for Config {
    fn default() -> Config {
        Config {
            http_listen: "0.0.0.0:7880".parse().expect("valid literal"),
            metrics_listen: None,
            rtc_tcp_bind: None,
            rtc_udp_bind: "0.0.0.0:7882".parse().expect("valid literal"),
            announce_ips: Vec::new(),
            announce_behind_nat: false,
            engine_threads: 0,
            call_token_secret: String::new(),
            call_token_issuer: "switchboard".into(),
            max_message_bytes: signaling::DEFAULT_MAX_MESSAGE_BYTES,
            reconnect_grace_seconds: 15,
            keyframe_request_interval_ms: 500,
            max_participants_per_room: 100,
            max_tracks_per_participant: 8,
            signaling_rate_per_second: 50,
            max_http_connections: 50_000,
            max_http_connections_per_ip: 1_000,
            deny_private_candidates: false,
            downlink_estimation: false,
            own_egress: true,
            dev_token_endpoint: false,
            dev_demo_dir: None,
            log_format: "text".into(),
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
            data_dir: "switchboard-data".into(),
            redis_url: None,
            redis_ca_file: None,
            redis_namespace: "switchboard".into(),
            node_id: String::new(),
            region: "default".into(),
            placement_fallback_region: String::new(),
            public_url: String::new(),
            api_keys: Vec::new(),
            event_webhooks: Vec::new(),
            event_webhook_max_age_seconds: 24 * 3600,
            event_webhook_max_queued: 100_000,
            ring_timeout_seconds: 40,
            connect_timeout_seconds: 20,
            drain_timeout_seconds: 600,
            max_ringing_devices: control::service::DEFAULT_MAX_RINGING_DEVICES,
            min_app_version: None,
            video_fallback: Default::default(),
            rollout_metrics_flag: None,
            call_creates_per_minute: 30,
            calls_to_one_user_per_minute: 20,
            api_requests_per_second: 20,
            apns: None,
            fcm: None,
            push_webhook_url: None,
            push_webhook_secret: String::new(),
            push_extra_root_cert: None,
            push_per_device_per_minute: 30,
            turn: TurnSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad config file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("bad environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// This node's name in the registry, on the relay and in traces:
    /// `node_id`, else the host name.
    pub fn node_name(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("node-{}", std::process::id()))
    }

    /// The file at `path` (if any), then the environment, then validation.
    pub fn load(path: Option<&str>) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// The file at `path` (if any), then the environment; not validated
    /// (`switchboard doctor` checks the secrets and the rest apart).
    pub fn read(path: Option<&str>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_string(),
                    source,
                })?;
                toml::from_str(&text)?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ConfigError::Env {
                name: name.to_string(),
                message: e.to_string(),
            })
        }
        if let Some(v) = var("SWITCHBOARD_HTTP_LISTEN") {
            self.http_listen = parse("SWITCHBOARD_HTTP_LISTEN", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_RTC_UDP_BIND") {
            self.rtc_udp_bind = parse("SWITCHBOARD_RTC_UDP_BIND", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_RTC_TCP_BIND") {
            self.rtc_tcp_bind = Some(parse("SWITCHBOARD_RTC_TCP_BIND", &v)?);
        }
        if let Some(v) = var("SWITCHBOARD_ANNOUNCE_IPS") {
            self.announce_ips = v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse("SWITCHBOARD_ANNOUNCE_IPS", s.trim()))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = var("SWITCHBOARD_ANNOUNCE_BEHIND_NAT") {
            self.announce_behind_nat = parse("SWITCHBOARD_ANNOUNCE_BEHIND_NAT", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_CALL_TOKEN_SECRET") {
            self.call_token_secret = v;
        }
        if let Some(v) = var("SWITCHBOARD_DEV_TOKEN_ENDPOINT") {
            self.dev_token_endpoint = parse("SWITCHBOARD_DEV_TOKEN_ENDPOINT", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_DEV_DEMO_DIR") {
            self.dev_demo_dir = Some(v.into());
        }
        if let Some(v) = var("SWITCHBOARD_RECONNECT_GRACE_SECONDS") {
            self.reconnect_grace_seconds = parse("SWITCHBOARD_RECONNECT_GRACE_SECONDS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_DENY_PRIVATE_CANDIDATES") {
            self.deny_private_candidates = parse("SWITCHBOARD_DENY_PRIVATE_CANDIDATES", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_DOWNLINK_ESTIMATION") {
            self.downlink_estimation = parse("SWITCHBOARD_DOWNLINK_ESTIMATION", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_OWN_EGRESS") {
            self.own_egress = parse("SWITCHBOARD_OWN_EGRESS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_METRICS_LISTEN") {
            self.metrics_listen = Some(parse("SWITCHBOARD_METRICS_LISTEN", &v)?);
        }
        if let Some(v) = var("SWITCHBOARD_MAX_HTTP_CONNECTIONS") {
            self.max_http_connections = parse("SWITCHBOARD_MAX_HTTP_CONNECTIONS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_MAX_HTTP_CONNECTIONS_PER_IP") {
            self.max_http_connections_per_ip =
                parse("SWITCHBOARD_MAX_HTTP_CONNECTIONS_PER_IP", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_API_REQUESTS_PER_SECOND") {
            self.api_requests_per_second = parse("SWITCHBOARD_API_REQUESTS_PER_SECOND", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_CALL_CREATES_PER_MINUTE") {
            self.call_creates_per_minute = parse("SWITCHBOARD_CALL_CREATES_PER_MINUTE", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_CALLS_TO_ONE_USER_PER_MINUTE") {
            self.calls_to_one_user_per_minute =
                parse("SWITCHBOARD_CALLS_TO_ONE_USER_PER_MINUTE", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_ENGINE_THREADS") {
            self.engine_threads = parse("SWITCHBOARD_ENGINE_THREADS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_MIN_APP_VERSION") {
            self.min_app_version = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("SWITCHBOARD_ROLLOUT_METRICS_FLAG") {
            self.rollout_metrics_flag = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("SWITCHBOARD_VIDEO_FALLBACK") {
            self.video_fallback = match v.as_str() {
                "audio" => control::service::VideoFallback::Audio,
                "refuse" => control::service::VideoFallback::Refuse,
                _ => {
                    return Err(ConfigError::Invalid(
                        "SWITCHBOARD_VIDEO_FALLBACK is audio or refuse".into(),
                    ));
                }
            };
        }
        if let Some(v) = var("SWITCHBOARD_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = var("SWITCHBOARD_OTLP_ENDPOINT") {
            self.otlp_endpoint = Some(v);
        }
        if let Some(v) = var("SWITCHBOARD_TRACE_SAMPLE_RATIO") {
            self.trace_sample_ratio = parse("SWITCHBOARD_TRACE_SAMPLE_RATIO", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("SWITCHBOARD_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = var("SWITCHBOARD_REDIS_CA_FILE") {
            self.redis_ca_file = Some(v.into());
        }
        if let Some(v) = var("SWITCHBOARD_REDIS_NAMESPACE") {
            self.redis_namespace = v;
        }
        if let Some(v) = var("SWITCHBOARD_NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = var("SWITCHBOARD_REGION") {
            self.region = v;
        }
        if let Some(v) = var("SWITCHBOARD_PLACEMENT_FALLBACK_REGION") {
            self.placement_fallback_region = v;
        }
        if let Some(v) = var("SWITCHBOARD_PUBLIC_URL") {
            self.public_url = v;
        }
        if let Some(v) = var("SWITCHBOARD_CONNECT_TIMEOUT_SECONDS") {
            self.connect_timeout_seconds = parse("SWITCHBOARD_CONNECT_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_DRAIN_TIMEOUT_SECONDS") {
            self.drain_timeout_seconds = parse("SWITCHBOARD_DRAIN_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_RING_TIMEOUT_SECONDS") {
            self.ring_timeout_seconds = parse("SWITCHBOARD_RING_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_PUSH_WEBHOOK_URL") {
            self.push_webhook_url = Some(v);
        }
        if let Some(v) = var("SWITCHBOARD_PUSH_WEBHOOK_SECRET") {
            self.push_webhook_secret = v;
        }
        // APNs from the environment: all four or none.
        if let Some(key_file) = var("SWITCHBOARD_APNS_KEY_FILE") {
            let need = |name: &str| {
                var(name).ok_or_else(|| ConfigError::Env {
                    name: name.into(),
                    message: "required with SWITCHBOARD_APNS_KEY_FILE".into(),
                })
            };
            self.apns = Some(ApnsSettings {
                key_file: key_file.into(),
                key_id: need("SWITCHBOARD_APNS_KEY_ID")?,
                team_id: need("SWITCHBOARD_APNS_TEAM_ID")?,
                bundle_id: need("SWITCHBOARD_APNS_BUNDLE_ID")?,
                production_url: apns_production_url(),
                sandbox_url: apns_sandbox_url(),
            });
        }
        if let Some(v) = var("SWITCHBOARD_FCM_SERVICE_ACCOUNT_FILE") {
            self.fcm = Some(FcmSettings {
                service_account_file: v.into(),
                project_id: var("SWITCHBOARD_FCM_PROJECT_ID"),
                url: fcm_url(),
            });
        }
        if let Some(v) = var("SWITCHBOARD_TURN_ENABLED") {
            self.turn.enabled = parse("SWITCHBOARD_TURN_ENABLED", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_TURN_UDP_LISTEN") {
            self.turn.udp_listen = Some(parse("SWITCHBOARD_TURN_UDP_LISTEN", &v)?);
        }
        if let Some(v) = var("SWITCHBOARD_TURN_TCP_LISTEN") {
            self.turn.tcp_listen = Some(parse("SWITCHBOARD_TURN_TCP_LISTEN", &v)?);
        }
        if let Some(v) = var("SWITCHBOARD_TURN_TLS_LISTEN") {
            self.turn.tls_listen = parse("SWITCHBOARD_TURN_TLS_LISTEN", &v)?;
        }
        if let Some(v) = var("SWITCHBOARD_TURN_SECRET") {
            self.turn.secrets = vec![v];
        }
        if let Some(v) = var("SWITCHBOARD_TURN_PUBLIC_HOST") {
            self.turn.public_host = v;
        }
        if let Some(v) = var("SWITCHBOARD_TURN_TLS_CERT_FILE") {
            self.turn.tls_cert_file = Some(v.into());
        }
        if let Some(v) = var("SWITCHBOARD_TURN_TLS_KEY_FILE") {
            self.turn.tls_key_file = Some(v.into());
        }
        // One event webhook from the environment; secrets comma-separated.
        if let Some(url) = var("SWITCHBOARD_EVENT_WEBHOOK_URL") {
            let secrets =
                var("SWITCHBOARD_EVENT_WEBHOOK_SECRETS").ok_or_else(|| ConfigError::Env {
                    name: "SWITCHBOARD_EVENT_WEBHOOK_SECRETS".into(),
                    message: "required with SWITCHBOARD_EVENT_WEBHOOK_URL".into(),
                })?;
            self.event_webhooks.push(EventWebhookSettings {
                url,
                secrets: secrets.split(',').map(|s| s.trim().to_string()).collect(),
            });
        }
        // One key from the environment: "id:secret".
        if let Some(v) = var("SWITCHBOARD_API_KEY") {
            let (id, secret) = v.split_once(':').ok_or_else(|| ConfigError::Env {
                name: "SWITCHBOARD_API_KEY".into(),
                message: "expected id:secret".into(),
            })?;
            self.api_keys.push(control::auth::ApiKey {
                id: id.into(),
                secret: secret.into(),
                revoked: false,
            });
        }
        Ok(())
    }

    /// Secrets, then everything else.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_secrets()?;
        self.validate_settings()
    }

    /// Every secret long enough, and those a cluster's nodes must share
    /// present.
    pub fn validate_secrets(&self) -> Result<(), ConfigError> {
        if !self.call_token_secret.is_empty() && self.call_token_secret.len() < 32 {
            return Err(ConfigError::Invalid(
                "call_token_secret must be at least 32 bytes".into(),
            ));
        }
        // A node mints call tokens and TURN credentials for rooms other
        // nodes host: a secret of its own would make them fail there.
        // (Development mode derives shared ones: `server::start`.)
        let cluster = self.redis_url.is_some() && !self.dev_token_endpoint;
        if cluster && self.call_token_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "a cluster (redis_url) needs call_token_secret, the same on every node".into(),
            ));
        }
        if cluster && self.turn.enabled && self.turn.secrets.is_empty() {
            return Err(ConfigError::Invalid(
                "a cluster (redis_url) with TURN needs [turn] secrets, the same on every node"
                    .into(),
            ));
        }
        if self
            .api_keys
            .iter()
            .any(|k| k.id.is_empty() || k.secret.len() < 32)
        {
            return Err(ConfigError::Invalid(
                "every API key needs an id and a secret of at least 32 bytes".into(),
            ));
        }
        if self.push_webhook_url.is_some() && self.push_webhook_secret.len() < 32 {
            return Err(ConfigError::Invalid(
                "push_webhook_secret must be at least 32 bytes".into(),
            ));
        }
        for hook in &self.event_webhooks {
            if hook.secrets.is_empty()
                || hook
                    .secrets
                    .iter()
                    .any(|s| control::webhooks::secret_key(s).is_err())
            {
                return Err(ConfigError::Invalid(format!(
                    "event_webhooks {}: {}",
                    hook.url,
                    control::webhooks::BadSecret
                )));
            }
        }
        if self.turn.secrets.iter().any(|s| s.len() < 32) {
            return Err(ConfigError::Invalid(
                "turn secrets must be at least 32 bytes".into(),
            ));
        }
        Ok(())
    }

    /// Everything but the secrets.
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 16 * 1024 {
            return Err(ConfigError::Invalid(
                "max_message_bytes below 16 KiB cannot carry an SDP".into(),
            ));
        }
        if self.announce_ips.iter().any(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid(
                "announce_ips cannot hold 0.0.0.0 or ::".into(),
            ));
        }
        if !control::placement::valid_region(&self.region)
            || !(self.placement_fallback_region.is_empty()
                || control::placement::valid_region(&self.placement_fallback_region))
        {
            return Err(ConfigError::Invalid(
                "region and placement_fallback_region are 1-32 characters of [a-z0-9-]".into(),
            ));
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::Invalid("public_url must be http(s)".into()));
        }
        if let Some(min) = &self.min_app_version
            && !control::flags::valid_version(min)
        {
            return Err(ConfigError::Invalid(
                "min_app_version is a dotted version (2.14.1)".into(),
            ));
        }
        if let Some(flag) = &self.rollout_metrics_flag
            && !control::flags::valid_name(flag)
        {
            return Err(ConfigError::Invalid(
                "rollout_metrics_flag is a flag name ([a-z0-9_], 1-64)".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid("log_format is text or json".into()));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "otlp_endpoint is an http(s) URL (OTLP over HTTP)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid(
                "trace_sample_ratio is between 0.0 and 1.0".into(),
            ));
        }
        if self
            .push_webhook_url
            .as_deref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return Err(ConfigError::Invalid(
                "push_webhook_url must be http(s)".into(),
            ));
        }
        for hook in &self.event_webhooks {
            if !(hook.url.starts_with("https://") || hook.url.starts_with("http://")) {
                return Err(ConfigError::Invalid(
                    "event_webhooks url must be http(s)".into(),
                ));
            }
        }
        let urls = self
            .apns
            .iter()
            .flat_map(|a| [&a.production_url, &a.sandbox_url])
            .chain(self.fcm.iter().map(|f| &f.url));
        for url in urls {
            if !url.starts_with("https://") {
                return Err(ConfigError::Invalid(format!(
                    "push provider URLs must be https: {url}"
                )));
            }
        }
        if self.call_creates_per_minute == 0
            || self.calls_to_one_user_per_minute == 0
            || self.api_requests_per_second == 0
            || self.push_per_device_per_minute == 0
        {
            return Err(ConfigError::Invalid("rate limits must be positive".into()));
        }
        if self.ring_timeout_seconds == 0 || self.connect_timeout_seconds == 0 {
            return Err(ConfigError::Invalid(
                "call timeouts must be positive".into(),
            ));
        }
        let turn = &self.turn;
        if turn.tls_cert_file.is_some() != turn.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "turn.tls_cert_file and turn.tls_key_file go together".into(),
            ));
        }
        if turn.credential_ttl_seconds == 0
            || turn.max_allocation_lifetime_seconds == 0
            || turn.allocations_per_user == 0
            || turn.max_allocations == 0
        {
            return Err(ConfigError::Invalid(
                "turn lifetimes and allocation limits must be positive".into(),
            ));
        }
        if self.signaling_rate_per_second == 0 {
            return Err(ConfigError::Invalid(
                "signaling_rate_per_second must be positive".into(),
            ));
        }
        Ok(())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }

    pub fn reconnect_grace(&self) -> Duration {
        Duration::from_secs(self.reconnect_grace_seconds)
    }

    pub fn engine_threads(&self) -> usize {
        match self.engine_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The announced IPs, or the default route's local address.
    pub fn effective_announce_ips(&self) -> Vec<IpAddr> {
        if !self.announce_ips.is_empty() {
            return self.announce_ips.clone();
        }
        if !self.rtc_udp_bind.ip().is_unspecified() {
            return vec![self.rtc_udp_bind.ip()];
        }
        vec![default_route_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]))]
    }
}

/// The local address the kernel would use for outside traffic. A UDP
/// `connect` only picks a route; nothing is sent (192.0.2.1 is TEST-NET-1).
fn default_route_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn env_overrides_and_is_checked() {
        let mut c = Config::default();
        c.apply_env(|n| (n == "SWITCHBOARD_ANNOUNCE_IPS").then(|| "10.0.0.1, 192.0.2.7".into()))
            .unwrap();
        assert_eq!(c.announce_ips.len(), 2);
        let err = c
            .apply_env(|n| (n == "SWITCHBOARD_HTTP_LISTEN").then(|| "nope".into()))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }));
    }

    #[test]
    fn short_secret_is_refused() {
        let c = Config {
            call_token_secret: "short".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_cluster_node_needs_the_secrets_every_node_shares() {
        let mut c = Config {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.call_token_secret = "s".repeat(32);
        assert!(c.validate().is_err());
        c.turn.secrets = vec!["t".repeat(32)];
        c.validate().unwrap();
        c.region = "EU West".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Config>("htp_listen = \"0.0.0.0:1\"").is_err());
    }
}
