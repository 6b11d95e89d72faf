//! The client core's shell: one `Client` per signed-in device. It owns the
//! call engine and the I/O around it (the events connection, the call API,
//! each call's media signaling connection) and turns the engine's outputs
//! into port calls. Everything happens on one driver task, so the engine
//! sees inputs one at a time; the platform calls `Client`'s methods from
//! any thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiError, CallApi, JoinInfo, Platform};
use crate::call_engine::{CallEngine, Input, Output, TrackChange};
use crate::credentials::UserToken;
use crate::events::{EventsCommand, EventsConfig};
use crate::ports::{
    AudioEndpoint, AudioRouteState, AudioRoutes, CallEvents, Credentials, MediaEvents,
    MediaFactory, MediaSession, PortError, PushTokens, SystemCallUi,
};
use crate::push::{self, PushDecision};
use crate::rtc_session::{RtcCommand, RtcSession};

/// Everything a `Client` is made from besides its ports. The app keeps it
/// (with the latest user token, in the Keychain / encrypted preferences:
/// `client_config_to_json`), so a push that wakes a killed app can build
/// its `Client` in the push callback (`client_config_from_json`) before
/// the app's own start-up ran.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, uniffi::Record)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    /// `http(s)://host:port` of the switchboard server.
    pub server_url: String,
    /// The user token the app's backend issued; when the server refuses
    /// it, the `Credentials` port is asked for a fresh one.
    pub user_token: String,
    pub device_id: String,
    pub platform: Platform,
    /// The device can send and show video.
    pub video: bool,
    /// iOS: the app's bundle id and APNs environment (`sandbox` for
    /// development builds, `production`), which VoIP pushes need.
    pub bundle_id: Option<String>,
    pub apns_environment: Option<String>,
    /// PEM certificates of a private CA to trust besides the platform's
    /// roots (a self-hosted server behind an internal CA). Usually `None`.
    pub trusted_ca_pem: Option<String>,
    /// The platform's call UI (CallKit, Telecom) may be used. `false`
    /// where it may not (CallKit in the China storefront): the server then
    /// rings this device by a visible alert push, never VoIP, and the app
    /// shows the call as a notification.
    #[uniffi(default = true)]
    #[serde(default = "system_call_ui_by_default")]
    pub system_call_ui: bool,
    /// Calls this device starts let their members send on the room's data
    /// channels (`dataChannels` at create; `Client::send_data`).
    #[uniffi(default = false)]
    #[serde(default)]
    pub data_channels: bool,
}

fn system_call_ui_by_default() -> bool {
    true
}

/// The app's saved configuration as one string (JSON, fields as in
/// `ClientConfig`, camelCase; unknown fields are ignored when read back).
#[uniffi::export]
pub fn client_config_to_json(config: ClientConfig) -> String {
    serde_json::to_string(&config).unwrap_or_default()
}

#[uniffi::export]
pub fn client_config_from_json(json: String) -> Result<ClientConfig, ClientError> {
    serde_json::from_str(&json).map_err(|e| ClientError::Config {
        detail: format!("not a saved client configuration: {e}"),
    })
}

/// The platform's implementations of the ports.
#[derive(Clone)]
pub struct Ports {
    pub ui: Arc<dyn SystemCallUi>,
    pub media: Arc<dyn MediaFactory>,
    pub audio: Arc<dyn AudioRoutes>,
    pub push: Arc<dyn PushTokens>,
    pub credentials: Arc<dyn Credentials>,
    pub events: Arc<dyn CallEvents>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
/// Fields are `detail`, not `message`: Kotlin exceptions have a `message`
/// of their own, and a field of that name does not compile in the bindings
/// (`tests/bindings.rs` compiles them).
pub enum ClientError {
    /// The server refused (its `code`, e.g. `invalid_request`, `forbidden`).
    #[error("refused: {code}: {detail}")]
    Refused { code: String, detail: String },
    #[error("server unreachable: {detail}")]
    Unreachable { detail: String },
    /// The configuration cannot work (e.g. `trusted_ca_pem` is not PEM).
    #[error("bad configuration: {detail}")]
    Config { detail: String },
    #[error("the client was shut down")]
    ShutDown,
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> ClientError {
        match e {
            ApiError::Refused { code, message, .. } => ClientError::Refused {
                code,
                detail: message,
            },
            ApiError::Transport(detail) => ClientError::Unreachable { detail },
        }
    }
}

/// The runtime foreign callers' clients and str0m sessions run on.
pub(crate) fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        log_to_stderr_if_asked();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("switchboard-client")
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Foreign callers have no tracing subscriber of their own: with
/// `SWITCHBOARD_CORE_LOG` set (a `tracing` filter, e.g. `native=debug`) the
/// core logs to stderr (a JVM or Python test, a phone's debug build).
fn log_to_stderr_if_asked() {
    if let Ok(filter) = std::env::var("SWITCHBOARD_CORE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

enum Command {
    Input(Input),
    /// The engine has outputs queued by a synchronous call (`handle_push`).
    Flush,
    /// Start a call; `reply` hears the server's call id (or why not).
    StartCall {
        call_uuid: String,
        callee: String,
        video: bool,
        reply: Option<StartReply>,
    },
    /// A call token arrived (created, accepted or refreshed).
    JoinInfo(JoinInfo, JoinKind),
    CreateFailed {
        call_uuid: String,
        error: ApiError,
    },
    RegisterDevice,
    NetworkChanged,
    /// Answered once the driver stopped: no port is called after that.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
enum JoinKind {
    Created { call_uuid: String },
    Accepted,
    Fresh,
}

/// The engine and its clock, shared by the driver and the synchronous
/// entry points (a push must be decided before the platform's callback
/// returns). Never held while a port is called: a port may call back in.
struct Shared {
    engine: Mutex<CallEngine>,
    started: Instant,
    /// Server clock minus device clock (ms), from the events socket.
    clock_offset: Arc<Mutex<Option<i64>>>,
}

impl Shared {
    fn engine(&self) -> std::sync::MutexGuard<'_, CallEngine> {
        // A panic elsewhere must not make every later call panic too.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, input: Input) {
        self.engine()
            .handle(input, self.started.elapsed(), crate::unix_millis());
    }
}

#[derive(uniffi::Object)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    token: Arc<UserToken>,
    sessions: LiveSessions,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<EventsCommand>,
}

impl Client {
    /// Starts the client's driver on `runtime` (Rust callers bring their own).
    pub fn start(
        config: ClientConfig,
        ports: Ports,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<Client>, ClientError> {
        let tls = crate::tls::client_config(config.trusted_ca_pem.as_deref())
            .map_err(|detail| ClientError::Config { detail })?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let token = UserToken::new(config.user_token.clone(), ports.credentials.clone());
        let sessions = Arc::new(Mutex::new(HashMap::new()));
        let shared = Arc::new(Shared {
            engine: Mutex::new(CallEngine::new()),
            started: Instant::now(),
            clock_offset: Arc::new(Mutex::new(None)),
        });
        let (events, events_rx) = mpsc::unbounded_channel();
        let events_config = EventsConfig {
            url: format!(
                "{}/v1/events",
                ws_base(config.server_url.trim_end_matches('/'))
            ),
            token: token.clone(),
            device_id: config.device_id.clone(),
            clock_offset: shared.clock_offset.clone(),
            tls: tls.clone(),
        };
        let driver = Driver {
            shared: shared.clone(),
            media_tasks: Vec::new(),
            token: token.clone(),
            api: CallApi::new(
                &config.server_url,
                token.clone(),
                &config.device_id,
                tls.clone(),
            ),
            tls,
            commands: commands.clone(),
            config,
            ports,
            sessions: sessions.clone(),
            calls: HashMap::new(),
            start_replies: HashMap::new(),
            replies: Vec::new(),
            events: events.clone(),
        };
        runtime.spawn(driver.run(commands_rx, events_config, events_rx));
        Ok(Arc::new(Client {
            commands,
            token,
            sessions,
            shared,
            events,
        }))
    }

    fn input(&self, input: Input) {
        let _ = self.commands.send(Command::Input(input));
    }

    /// `start_call` for async Rust callers.
    pub async fn start_call_async(
        &self,
        callee_user_id: String,
        video: bool,
        call_uuid: Option<String>,
    ) -> Result<String, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::StartCall {
                call_uuid: call_uuid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                callee: callee_user_id,
                video,
                reply: Some(reply),
            })
            .map_err(|_| ClientError::ShutDown)?;
        answer.await.map_err(|_| ClientError::ShutDown)?
    }

    fn decide(&self, push: Result<push::Push, push::Unreadable>) -> PushDecision {
        let offset = *self
            .shared
            .clock_offset
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let decision = self.shared.engine().on_push(
            push,
            self.shared.started.elapsed(),
            crate::unix_millis(),
            offset,
        );
        // After a wake the events socket comes up at once: the cancel and
        // the call's events arrive over it; pushes are the fallback.
        let _ = self.events.send(EventsCommand::ConnectNow);
        let _ = self.commands.send(Command::Flush);
        decision
    }
}

#[uniffi::export]
impl Client {
    /// Starts a client on the core's own runtime (foreign callers).
    #[uniffi::constructor]
    pub fn new(
        config: ClientConfig,
        ui: Arc<dyn SystemCallUi>,
        media: Arc<dyn MediaFactory>,
        audio: Arc<dyn AudioRoutes>,
        push: Arc<dyn PushTokens>,
        credentials: Arc<dyn Credentials>,
        events: Arc<dyn CallEvents>,
    ) -> Result<Arc<Client>, ClientError> {
        let ports = Ports {
            ui,
            media,
            audio,
            push,
            credentials,
            events,
        };
        Client::start(config, ports, shared_runtime().handle())
    }

    /// Calls `callee_user_id`; returns the server's call id once the server
    /// rang them. `call_uuid`: the UUID the app reported to CallKit /
    /// Telecom before asking (a fresh one when absent); it is also the
    /// request's idempotency key, so a retry never makes a second call.
    /// Blocks: call it off the UI thread (async Rust: `start_call_async`).
    pub fn start_call(
        &self,
        callee_user_id: String,
        video: bool,
        call_uuid: Option<String>,
    ) -> Result<String, ClientError> {
        shared_runtime().block_on(self.start_call_async(callee_user_id, video, call_uuid))
    }

    /// A call started from the system (Recents, Siri, a car:
    /// `CXStartCallAction`): returns at once; `report_outgoing_call_started`
    /// or `report_call_ended(.., Failed)` follows.
    pub fn system_start_call(&self, handle: String, video: bool, call_uuid: String) {
        let _ = self.commands.send(Command::StartCall {
            call_uuid,
            callee: handle,
            video,
            reply: None,
        });
    }

    /// A push arrived (the VoIP payload as JSON, or an FCM data map as a
    /// JSON object). Returns, at once, what the platform must show before
    /// its push callback returns; the core records it, so it never asks
    /// for a second report of that call. Every payload gets a decision.
    pub fn handle_push(&self, payload: String) -> PushDecision {
        self.decide(push::parse_json(&payload))
    }

    /// [`Client::handle_push`] for an FCM data map (`RemoteMessage.getData()`).
    pub fn handle_push_data(&self, data: HashMap<String, String>) -> PushDecision {
        self.decide(push::parse_map(&data))
    }

    /// The system shows the incoming call (CallKit's report completed, or
    /// answered `callUUIDAlreadyExists`; Telecom added it): the server
    /// hears "call UI shown" now, not before.
    pub fn incoming_call_displayed(&self, call_uuid: String) {
        self.input(Input::IncomingCallDisplayed { call_uuid });
    }

    /// The system refused to show the incoming call (Do Not Disturb, a
    /// blocked caller, too many calls): it ends on this device only; the
    /// user's other devices keep ringing.
    pub fn incoming_call_failed(&self, call_uuid: String, reason: String) {
        self.input(Input::IncomingCallFailed { call_uuid, reason });
    }

    /// The system call UI failed without ending the call (Telecom refused
    /// to add it; a notification rings instead): reported to the server
    /// as `code` (snake case: `error_call_not_permitted_at_present_time`).
    pub fn call_ui_error(&self, call_uuid: String, code: String) {
        self.input(Input::SystemUiError { call_uuid, code });
    }

    /// CallKit `providerDidReset`: every call ended by the system.
    pub fn system_reset(&self) {
        self.input(Input::SystemReset);
    }

    /// The system UI's answer action (CallKit `CXAnswerCallAction`).
    pub fn answer(&self, call_uuid: String) {
        self.input(Input::SystemAnswer { call_uuid });
    }

    /// The system UI's end action: declines a ringing call, ends others.
    pub fn end(&self, call_uuid: String) {
        self.input(Input::SystemEnd { call_uuid });
    }

    pub fn set_muted(&self, call_uuid: String, muted: bool) {
        self.input(Input::SystemMute { call_uuid, muted });
    }

    /// On hold (CallKit `CXSetHeldCallAction`): no microphone, no playout;
    /// off hold the user's own mute state comes back.
    pub fn set_held(&self, call_uuid: String, held: bool) {
        self.input(Input::SystemHold { call_uuid, held });
    }

    /// Sends `payload` on the call's data channels to the room, or only to
    /// the participants in `to` (PROTOCOL.md "Data channels"). Refused here
    /// with the code the server would send (`permission_denied`,
    /// `message_too_large`, `bad_message`), or `not_connected` before the
    /// channel is open; the server also limits the rate.
    pub fn send_data(
        &self,
        call_uuid: String,
        payload: String,
        reliable: bool,
        to: Option<Vec<String>>,
    ) -> Result<(), ClientError> {
        let refused = |code: &str, detail: &str| ClientError::Refused {
            code: code.into(),
            detail: detail.into(),
        };
        let live = self
            .live(&call_uuid)
            .ok_or_else(|| refused("not_connected", "the call has no media"))?;
        if !live
            .may_send_data
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(refused(
                "permission_denied",
                "this call does not allow sending data (dataChannels)",
            ));
        }
        let send = signaling::DataSend { to, payload };
        send.check()
            .map_err(|(code, detail)| refused(code.as_str(), detail))?;
        live.session
            .send_data(reliable, signaling::encode(&send))
            .map_err(|e| refused("not_connected", &e.to_string()))
    }

    /// A remote video is shown `width` x `height` device pixels large: the
    /// server sends the smallest of its simulcast layers that covers that
    /// (PROTOCOL.md `updateSubscription`). Said again after reconnecting.
    pub fn set_video_size(&self, call_uuid: String, track_id: String, width: u32, height: u32) {
        if let Some(live) = self.live(&call_uuid) {
            let _ = live.rtc.send(RtcCommand::ShowVideo {
                track_id,
                width,
                height,
            });
        }
    }

    pub fn set_camera_enabled(&self, call_uuid: String, enabled: bool) {
        if let Some(session) = self.session(&call_uuid)
            && let Err(e) = session.set_camera_enabled(enabled)
        {
            tracing::warn!(error = %e, "camera could not be switched");
        }
    }

    /// The server's id of the call the system knows as `call_uuid`.
    pub fn call_id(&self, call_uuid: String) -> Option<String> {
        self.shared.engine().call_id_of(&call_uuid)
    }

    /// The UUID of the call the server knows as `call_id` (the plugin's
    /// JS API names calls by the server's id on every platform).
    pub fn call_uuid(&self, call_id: String) -> Option<String> {
        self.shared.engine().call_uuid_of(&call_id)
    }

    /// Every call this device is in: what a UI that loads during a call
    /// (a cold start from a push, a reloaded WebView) shows first.
    pub fn active_calls(&self) -> Vec<crate::ports::ActiveCall> {
        self.shared.engine().active_calls()
    }

    /// The server's feature flags for this device (empty until it first
    /// says; `CallEvents::flags_changed` follows each change).
    pub fn flags(&self) -> HashMap<String, bool> {
        self.shared.engine().flags()
    }

    /// CallKit `didActivate audioSession` (elsewhere: when audio may start).
    pub fn audio_session_activated(&self) {
        self.input(Input::AudioSessionActivated);
    }

    pub fn audio_session_deactivated(&self) {
        self.input(Input::AudioSessionDeactivated);
    }

    /// The network changed: every connection reconnects now (calls resume).
    pub fn network_changed(&self) {
        let _ = self.commands.send(Command::NetworkChanged);
    }

    /// A fresh user token: the answer to `Credentials::refresh_user_token`,
    /// or one the app has on its own (a new sign-in). Requests refused for
    /// the old one are sent again with it; the events socket carries on.
    pub fn set_user_token(&self, token: String) {
        self.token.set(token);
    }

    /// The app could not get a fresh user token (signed out, offline):
    /// requests waiting for one fail now.
    pub fn user_token_failed(&self, detail: String) {
        self.token.failed(&detail);
    }

    /// The platform's audio endpoints changed (AVAudioSession's route
    /// change; Core-Telecom's endpoint flows), or are reported the first
    /// time. `current_id`: the endpoint in use.
    pub fn audio_routes_changed(&self, endpoints: Vec<AudioEndpoint>, current_id: Option<String>) {
        self.input(Input::AudioRoutesChanged(AudioRouteState {
            endpoints,
            current_id,
        }));
    }

    /// The endpoints as last reported, for the app's route picker.
    pub fn audio_routes(&self) -> AudioRouteState {
        self.shared.engine().audio_routes().clone()
    }

    /// The user picked where audio plays (one of `audio_routes()`).
    pub fn select_audio_route(&self, endpoint_id: String) -> Result<(), ClientError> {
        let known = self
            .shared
            .engine()
            .audio_routes()
            .endpoints
            .iter()
            .any(|e| e.id == endpoint_id);
        if !known {
            return Err(ClientError::Refused {
                code: "unknown_route".into(),
                detail: format!("no audio endpoint {endpoint_id} was reported"),
            });
        }
        self.input(Input::SelectAudioRoute { endpoint_id });
        Ok(())
    }

    /// Re-registers the device with the tokens `PushTokens` now returns.
    pub fn push_tokens_changed(&self) {
        let _ = self.commands.send(Command::RegisterDevice);
    }

    pub fn media_stats(&self, call_uuid: String) -> Option<crate::ports::MediaStats> {
        self.session(&call_uuid).and_then(|s| s.stats().ok())
    }

    /// Leaves every call and closes every connection; returns once no
    /// port will be called again (so a foreign runtime may exit).
    pub fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).is_ok() {
            let wait = async { tokio::time::timeout(Duration::from_secs(5), stopped).await };
            let _ = shared_runtime().block_on(wait);
        }
    }
}

impl Client {
    fn session(&self, call_uuid: &str) -> Option<Arc<dyn MediaSession>> {
        self.live(call_uuid).map(|live| live.session)
    }

    fn live(&self, call_uuid: &str) -> Option<LiveMedia> {
        let call_id = self.shared.engine().call_id_of(call_uuid)?;
        self.sessions.lock().ok()?.get(&call_id).cloned()
    }
}

/// The media sessions of the calls in progress, by server call id.
type LiveSessions = Arc<Mutex<HashMap<String, LiveMedia>>>;

#[derive(Clone)]
struct LiveMedia {
    session: Arc<dyn MediaSession>,
    /// The call's RTC session (its signaling).
    rtc: mpsc::UnboundedSender<RtcCommand>,
    /// The call token's `publishData`, as `joined` said (the RTC session
    /// sets it).
    may_send_data: Arc<std::sync::atomic::AtomicBool>,
}

/// A call's I/O beyond the engine.
#[derive(Default)]
struct CallIo {
    join: Option<JoinInfo>,
    rtc: Option<mpsc::UnboundedSender<RtcCommand>>,
}

struct Driver {
    shared: Arc<Shared>,
    /// Each call's media signaling task (it owns a media session port).
    media_tasks: Vec<tokio::task::JoinHandle<()>>,
    token: Arc<UserToken>,
    api: CallApi,
    commands: mpsc::UnboundedSender<Command>,
    config: ClientConfig,
    ports: Ports,
    sessions: LiveSessions,
    /// By server call id.
    calls: HashMap<String, CallIo>,
    /// `start_call`s waiting for the server's call id, by call UUID.
    start_replies: HashMap<String, StartReply>,
    replies: Vec<(StartReply, Result<String, ClientError>)>,
    events: mpsc::UnboundedSender<EventsCommand>,
    tls: Arc<rustls::ClientConfig>,
}

type StartReply = oneshot::Sender<Result<String, ClientError>>;

/// Logs a port that failed: a Swift or Kotlin exception must not stop the
/// driver (the call goes on; the platform's own UI may be behind).
fn port(what: &str, result: Result<(), PortError>) {
    if let Err(e) = result {
        tracing::warn!(port = what, error = %e, "port failed");
    }
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        events_config: EventsConfig,
        events_rx: mpsc::UnboundedReceiver<EventsCommand>,
    ) {
        // The server refuses an events socket for a device it does not know.
        self.register_device().await;
        let (inputs_tx, mut inputs) = mpsc::unbounded_channel();
        crate::events::spawn_with(events_config, inputs_tx.clone(), events_rx);
        let forward = self.commands.clone();
        tokio::spawn(async move {
            while let Some(input) = inputs.recv().await {
                if forward.send(Command::Input(input)).is_err() {
                    return;
                }
            }
        });
        let mut stopped = None;
        loop {
            let started = self.shared.started;
            let next = self.shared.engine().next_timeout().map(|d| started + d);
            let far = Instant::now() + Duration::from_secs(3600);
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = tokio::time::sleep_until(next.unwrap_or(far).into()) => {
                    self.shared.engine().handle_timeout(started.elapsed());
                    self.execute(&inputs_tx);
                    continue;
                }
            };
            match command {
                None => break,
                Some(Command::Shutdown(done)) => {
                    stopped = Some(done);
                    break;
                }
                Some(command) => self.on_command(command).await,
            }
            self.execute(&inputs_tx);
        }
        for (call_id, call) in self.calls.drain() {
            if let Some(rtc) = call.rtc {
                let _ = rtc.send(RtcCommand::Leave);
            }
            tracing::info!(call_id = %call_id, device_id = %self.config.device_id, "client shut down");
        }
        let _ = self.events.send(EventsCommand::Stop);
        // The media sessions are closed and released by their tasks: wait
        // (bounded) so that happens before `shutdown` returns too.
        let tasks = futures_util::future::join_all(std::mem::take(&mut self.media_tasks));
        let _ = tokio::time::timeout(Duration::from_secs(3), tasks).await;
        // Foreign ports are released here, before `shutdown` returns: a
        // release after the foreign runtime exited would crash it (tasks
        // that outlive the driver hold the token, not the app's object).
        self.token.detach();
        drop(self);
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Input(input) => self.shared.handle(input),
            Command::Flush | Command::Shutdown(_) => {}
            Command::StartCall {
                call_uuid,
                callee,
                video,
                reply,
            } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if let Some(reply) = reply {
                    self.start_replies.insert(call_uuid.clone(), reply);
                }
                self.shared.handle(Input::StartCall {
                    call_uuid,
                    callee_user_id: callee,
                    video,
                });
            }
            Command::JoinInfo(info, kind) => {
                let call_id = info.call_id.clone();
                let call_token = info.call_token.clone();
                let answered = info.answered;
                let call = self.calls.entry(call_id.clone()).or_default();
                call.join = Some(info);
                let input = match kind {
                    JoinKind::Created { call_uuid } => {
                        if let Some(reply) = self.start_replies.remove(&call_uuid) {
                            // Answered once the engine has reported the call.
                            self.replies.push((reply, Ok(call_id.clone())));
                        }
                        Input::Created {
                            call_uuid,
                            call_id,
                            call_token,
                            answered,
                        }
                    }
                    JoinKind::Accepted => Input::Accepted {
                        call_id,
                        call_token,
                    },
                    JoinKind::Fresh => Input::FreshToken {
                        call_id,
                        call_token,
                    },
                };
                self.shared.handle(input);
            }
            Command::CreateFailed { call_uuid, error } => {
                if let Some(reply) = self.start_replies.remove(&call_uuid) {
                    let _ = reply.send(Err(error.into()));
                }
                self.shared.handle(Input::CreateFailed { call_uuid });
            }
            Command::RegisterDevice => self.register_device().await,
            Command::NetworkChanged => {
                let _ = self.events.send(EventsCommand::Reconnect);
                for call in self.calls.values() {
                    if let Some(rtc) = &call.rtc {
                        let _ = rtc.send(RtcCommand::Reconnect);
                    }
                }
            }
        }
    }

    async fn register_device(&self) {
        let tokens = match self.ports.push.current() {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::warn!(device_id = %self.config.device_id, error = %e, "push tokens unavailable; registering without");
                Default::default()
            }
        };
        match self.api.register_device(&self.config, &tokens).await {
            Ok(Some(flags)) => self.shared.handle(Input::Flags(flags)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(device_id = %self.config.device_id, error = %e, "device registration failed");
            }
        }
    }

    /// Carries out the engine's outputs through the ports and the API. The
    /// engine is not locked while a port runs (a port may call back in).
    fn execute(&mut self, inputs: &mpsc::UnboundedSender<Input>) {
        loop {
            let Some(output) = self.shared.engine().poll_output() else {
                break;
            };
            self.execute_one(output, inputs);
        }
        for (reply, result) in self.replies.drain(..) {
            let _ = reply.send(result);
        }
    }

    fn execute_one(&mut self, output: Output, inputs: &mpsc::UnboundedSender<Input>) {
        let device_id = &self.config.device_id;
        let ui = &self.ports.ui;
        match output {
            Output::ReportIncoming { call } => {
                tracing::info!(call_id = %call.call_id, device_id = %device_id, "incoming call reported");
                port("report_incoming_call", ui.report_incoming_call(call));
            }
            Output::ReportOutgoingStarted { call_uuid, call_id } => port(
                "report_outgoing_call_started",
                ui.report_outgoing_call_started(call_uuid, call_id),
            ),
            Output::ReportConnected { call_uuid } => {
                tracing::info!(call_uuid = %call_uuid, device_id = %device_id, "call connected");
                port("report_call_connected", ui.report_call_connected(call_uuid));
            }
            Output::ReportEnded {
                call_uuid,
                call_id,
                reason,
            } => {
                tracing::info!(call_id = ?call_id, call_uuid = %call_uuid, device_id = %device_id, ?reason, "call ended");
                // Not when another entry carries the call on (a crossed
                // call's ringing entry ends as the outgoing one joins it).
                if let Some(call_id) = call_id
                    && self.shared.engine().call_uuid_of(&call_id).is_none()
                {
                    self.calls.remove(&call_id);
                }
                if let Some(reply) = self.start_replies.remove(&call_uuid) {
                    let _ = reply.send(Err(ClientError::Refused {
                        code: "call_ended".into(),
                        detail: format!("the call ended: {reason:?}"),
                    }));
                }
                port("report_call_ended", ui.report_call_ended(call_uuid, reason));
            }
            Output::CreateCall {
                call_uuid,
                callee_user_id,
                video,
            } => {
                let (api, commands) = (self.api.clone(), self.commands.clone());
                let data_channels = self.config.data_channels;
                tokio::spawn(async move {
                    let created = api
                        .create_call(&callee_user_id, video, data_channels, &call_uuid)
                        .await;
                    let command = match created {
                        Ok(info) => Command::JoinInfo(info, JoinKind::Created { call_uuid }),
                        Err(error) => Command::CreateFailed { call_uuid, error },
                    };
                    let _ = commands.send(command);
                });
            }
            Output::Accept { call_id } => {
                let (api, commands) = (self.api.clone(), self.commands.clone());
                tokio::spawn(async move {
                    let command = match api.accept(&call_id).await {
                        Ok(info) => Command::JoinInfo(info, JoinKind::Accepted),
                        Err(e) => Command::Input(Input::AcceptRefused {
                            call_id,
                            reason: e.code().to_string(),
                        }),
                    };
                    let _ = commands.send(command);
                });
            }
            Output::RequestFreshToken { call_id } => {
                let (api, commands) = (self.api.clone(), self.commands.clone());
                tokio::spawn(async move {
                    match api.fresh_token(&call_id).await {
                        Ok(info) => {
                            let _ = commands.send(Command::JoinInfo(info, JoinKind::Fresh));
                        }
                        // The engine's connect timeout ends the call.
                        Err(e) => {
                            tracing::warn!(call_id = %call_id, error = %e, "no fresh call token")
                        }
                    }
                });
            }
            Output::Ack { call_id } => {
                self.fire("ack", call_id, |api, id| async move { api.ack(&id).await })
            }
            Output::Report { call_id, report } => {
                let platform = self.config.platform;
                self.fire("report", call_id, move |api, id| async move {
                    api.report(&id, &report, platform).await
                })
            }
            Output::Decline { call_id } => self.fire("decline", call_id, |api, id| async move {
                api.decline(&id).await
            }),
            Output::End { call_id } => {
                self.fire("end", call_id, |api, id| async move { api.end(&id).await })
            }
            Output::JoinMedia {
                call_id,
                call_token,
                video,
            } => self.join_media(call_id, call_token, video, inputs),
            Output::RestartIce { call_id } => self.rtc(&call_id, RtcCommand::RestartIce),
            Output::SetMuted { call_id, muted } => {
                if let Some(session) = self.session(&call_id) {
                    port("set_muted", session.set_muted(muted));
                }
            }
            Output::SetHeld { call_id, held } => {
                if let Some(session) = self.session(&call_id) {
                    port("set_held", session.set_held(held));
                }
            }
            Output::LeaveMedia { call_id } => {
                self.rtc(&call_id, RtcCommand::Leave);
                self.calls.remove(&call_id);
                if let Ok(mut sessions) = self.sessions.lock() {
                    sessions.remove(&call_id);
                }
            }
            Output::SelectAudioRoute { endpoint_id } => {
                tracing::info!(device_id = %device_id, endpoint_id = %endpoint_id, "audio route selected");
                port("select_route", self.ports.audio.select_route(endpoint_id))
            }
            Output::ReportActiveSpeakers {
                call_uuid,
                speakers,
            } => port(
                "active_speakers_changed",
                self.ports
                    .events
                    .active_speakers_changed(call_uuid, speakers),
            ),
            Output::ReportData { call_uuid, message } => port(
                "data_received",
                self.ports.events.data_received(call_uuid, message),
            ),
            Output::FlagsChanged { flags } => {
                tracing::info!(device_id = %device_id, ?flags, "feature flags changed");
                port("flags_changed", self.ports.events.flags_changed(flags));
            }
            Output::ReportReconnecting { call_uuid } => {
                tracing::info!(call_uuid = %call_uuid, device_id = %device_id, "call reconnecting");
                port(
                    "call_reconnecting",
                    self.ports.events.call_reconnecting(call_uuid),
                );
            }
            Output::ReportReconnected { call_uuid } => {
                tracing::info!(call_uuid = %call_uuid, device_id = %device_id, "call reconnected");
                port(
                    "call_reconnected",
                    self.ports.events.call_reconnected(call_uuid),
                );
            }
            Output::ReportRemoteTrack { call_uuid, change } => {
                let events = &self.ports.events;
                let result = match change {
                    TrackChange::Added(track) => events.remote_track_added(call_uuid, track),
                    TrackChange::Removed { track_id } => {
                        events.remote_track_removed(call_uuid, track_id)
                    }
                    TrackChange::Muted { track_id, muted } => {
                        events.remote_track_muted(call_uuid, track_id, muted)
                    }
                    TrackChange::Paused { track_id, paused } => {
                        events.remote_track_paused(call_uuid, track_id, paused)
                    }
                };
                port("remote_track", result);
            }
        }
    }

    fn session(&self, call_id: &str) -> Option<Arc<dyn MediaSession>> {
        let sessions = self.sessions.lock().ok()?;
        Some(sessions.get(call_id)?.session.clone())
    }

    /// An API request whose answer the engine does not wait for.
    fn fire<F, Fut>(&self, what: &'static str, call_id: String, request: F)
    where
        F: FnOnce(CallApi, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), ApiError>> + Send,
    {
        let api = self.api.clone();
        let device_id = self.config.device_id.clone();
        tokio::spawn(async move {
            if let Err(e) = request(api, call_id.clone()).await {
                tracing::warn!(call_id = %call_id, device_id = %device_id, request = what, error = %e, "call request refused");
            }
        });
    }

    fn rtc(&self, call_id: &str, command: RtcCommand) {
        if let Some(rtc) = self.calls.get(call_id).and_then(|c| c.rtc.as_ref()) {
            let _ = rtc.send(command);
        }
    }

    fn join_media(
        &mut self,
        call_id: String,
        call_token: String,
        video: bool,
        inputs: &mpsc::UnboundedSender<Input>,
    ) {
        let call = self.calls.entry(call_id.clone()).or_default();
        if let Some(old) = call.rtc.take() {
            let _ = old.send(RtcCommand::Leave);
        }
        // The node hosting the room when the server placed it; else this
        // API's host.
        let (ice_servers, url) = match &call.join {
            Some(j) => (
                j.ice_servers.clone(),
                j.rtc_url
                    .clone()
                    .unwrap_or_else(|| format!("{}{}", ws_base(self.api.base()), j.rtc_path)),
            ),
            None => (Vec::new(), format!("{}/v1/rtc", ws_base(self.api.base()))),
        };
        let (events_tx, media_events) = mpsc::unbounded_channel();
        let session = match self.ports.media.create_session(
            call_id.clone(),
            video,
            ice_servers,
            MediaEvents::new(events_tx),
        ) {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(call_id = %call_id, error = %e, "no media session");
                let _ = inputs.send(Input::MediaUnavailable { call_id });
                return;
            }
        };
        let may_send_data = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Registered once the RTC session (which takes these) exists.
        let (live_session, live_may_send, live_key) =
            (session.clone(), may_send_data.clone(), call_id.clone());
        let locate_room: crate::rtc_session::LocateRoom = {
            let (api, call_id) = (self.api.clone(), call_id.clone());
            Arc::new(move || {
                let (api, call_id) = (api.clone(), call_id.clone());
                Box::pin(async move {
                    let info = api.fresh_token(&call_id).await.ok()?;
                    Some(
                        info.rtc_url
                            .unwrap_or_else(|| format!("{}{}", ws_base(api.base()), info.rtc_path)),
                    )
                })
            })
        };
        let (rtc, task) = crate::rtc_session::spawn(RtcSession {
            url,
            call_id,
            call_token,
            media: session,
            media_events,
            may_send_data,
            engine: inputs.clone(),
            tls: self.tls.clone(),
            locate_room: Some(locate_room),
        });
        if let Ok(mut sessions) = self.sessions.lock() {
            let live = LiveMedia {
                session: live_session,
                rtc: rtc.clone(),
                may_send_data: live_may_send,
            };
            sessions.insert(live_key, live);
        }
        call.rtc = Some(rtc);
        self.media_tasks.retain(|t| !t.is_finished());
        self.media_tasks.push(task);
    }
}

/// `http://h:p` -> `ws://h:p`, `https://` -> `wss://`.
fn ws_base(http: &str) -> String {
    if let Some(rest) = http.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = http.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        http.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        assert_eq!(ws_base("http://127.0.0.1:7880"), "ws://127.0.0.1:7880");
        assert_eq!(ws_base("https://calls.example"), "wss://calls.example");
    }
}
