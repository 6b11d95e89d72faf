//! The client core's shell: one `Client` per signed-in device. It owns the
//! call engine and the I/O around it (the events connection, the call API,
//! each call's media signaling connection) and turns the engine's outputs
//! into port calls. Everything happens on one driver task, so the engine
//! sees inputs one at a time; the platform calls `Client`'s methods from
//! any thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiError, CallApi, JoinInfo, Platform};
use crate::call_engine::{CallEngine, Input, Output, Ring};
use crate::events::{EventsCommand, EventsConfig};
use crate::ports::{AudioRoute, MediaEvents, MediaFactory, MediaSession, PushTokens, SystemCallUi};
use crate::rtc_session::{RtcCommand, RtcSession};

#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientConfig {
    /// `http(s)://host:port` of the switchboard server.
    pub server_url: String,
    /// The user token the app's backend issued (refresh with `set_user_token`).
    pub user_token: String,
    pub device_id: String,
    pub platform: Platform,
    /// The device can send and show video.
    pub video: bool,
    /// iOS: the app's bundle id and APNs environment (`sandbox` for
    /// development builds, `production`), which VoIP pushes need.
    pub bundle_id: Option<String>,
    pub apns_environment: Option<String>,
}

/// The platform's implementations of the ports.
#[derive(Clone)]
pub struct Ports {
    pub ui: Arc<dyn SystemCallUi>,
    pub media: Arc<dyn MediaFactory>,
    pub audio: Arc<dyn AudioRoute>,
    pub push: Arc<dyn PushTokens>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum ClientError {
    /// The server refused (its `code`, e.g. `invalid_request`, `forbidden`).
    #[error("refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("server unreachable: {message}")]
    Unreachable { message: String },
    /// A push payload that is not one of PUSH.md's.
    #[error("not a call push: {message}")]
    BadPush { message: String },
    #[error("the client was shut down")]
    ShutDown,
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> ClientError {
        match e {
            ApiError::Refused { code, message, .. } => ClientError::Refused { code, message },
            ApiError::Transport(message) => ClientError::Unreachable { message },
        }
    }
}

/// The runtime foreign callers' clients and str0m sessions run on.
pub(crate) fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("switchboard-client")
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

enum Command {
    Input(Input),
    StartCall {
        callee: String,
        video: bool,
        reply: oneshot::Sender<Result<String, ClientError>>,
    },
    /// A call token arrived (created, accepted or refreshed).
    JoinInfo(JoinInfo, JoinKind),
    CreateFailed(ApiError),
    RegisterDevice,
    NetworkChanged,
    /// Answered once the driver stopped: no port is called after that.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy)]
enum JoinKind {
    Created,
    Accepted,
    Fresh,
}

#[derive(uniffi::Object)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    token: Arc<RwLock<String>>,
    sessions: Arc<Mutex<HashMap<String, Arc<dyn MediaSession>>>>,
}

impl Client {
    /// Starts the client's driver on `runtime` (Rust callers bring their own).
    pub fn start(
        config: ClientConfig,
        ports: Ports,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Client> {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let token = Arc::new(RwLock::new(config.user_token.clone()));
        let sessions = Arc::new(Mutex::new(HashMap::new()));
        let driver = Driver {
            engine: CallEngine::new(),
            started: Instant::now(),
            api: CallApi::new(&config.server_url, token.clone(), &config.device_id),
            commands: commands.clone(),
            config,
            ports,
            token: token.clone(),
            sessions: sessions.clone(),
            calls: HashMap::new(),
            start_reply: None,
            replies: Vec::new(),
        };
        runtime.spawn(driver.run(commands_rx));
        Arc::new(Client {
            commands,
            token,
            sessions,
        })
    }

    fn input(&self, input: Input) {
        let _ = self.commands.send(Command::Input(input));
    }

    /// `start_call` for async Rust callers.
    pub async fn start_call_async(
        &self,
        callee_user_id: String,
        video: bool,
    ) -> Result<String, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::StartCall {
                callee: callee_user_id,
                video,
                reply,
            })
            .map_err(|_| ClientError::ShutDown)?;
        answer.await.map_err(|_| ClientError::ShutDown)?
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
        audio: Arc<dyn AudioRoute>,
        push: Arc<dyn PushTokens>,
    ) -> Arc<Client> {
        let ports = Ports {
            ui,
            media,
            audio,
            push,
        };
        Client::start(config, ports, shared_runtime().handle())
    }

    /// Calls `callee_user_id`; returns the call id once the server rang them.
    /// Blocks: call it off the UI thread (async Rust: `start_call_async`).
    pub fn start_call(&self, callee_user_id: String, video: bool) -> Result<String, ClientError> {
        shared_runtime().block_on(self.start_call_async(callee_user_id, video))
    }

    /// A push arrived (the VoIP / FCM payload as JSON). A ring for a call
    /// already known is not reported again; a stale one is reported and
    /// ended at once. Unknown fields are ignored.
    pub fn handle_push(&self, payload: String) -> Result<(), ClientError> {
        let input = push_input(&payload)?;
        self.input(input);
        Ok(())
    }

    /// The system UI's answer action (CallKit `CXAnswerCallAction`).
    pub fn answer(&self, call_id: String) {
        self.input(Input::SystemAnswer { call_id });
    }

    /// The system UI's end action: declines a ringing call, ends others.
    pub fn end(&self, call_id: String) {
        self.input(Input::SystemEnd { call_id });
    }

    pub fn set_muted(&self, call_id: String, muted: bool) {
        self.input(Input::SystemMute { call_id, muted });
    }

    pub fn set_held(&self, call_id: String, held: bool) {
        self.input(Input::SystemHold { call_id, held });
    }

    pub fn set_camera_enabled(&self, call_id: String, enabled: bool) {
        if let Some(session) = self.session(&call_id) {
            session.set_camera_enabled(enabled);
        }
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

    pub fn set_user_token(&self, token: String) {
        if let Ok(mut current) = self.token.write() {
            *current = token;
        }
    }

    /// Re-registers the device with the tokens `PushTokens` now returns.
    pub fn push_tokens_changed(&self) {
        let _ = self.commands.send(Command::RegisterDevice);
    }

    pub fn media_stats(&self, call_id: String) -> Option<crate::ports::MediaStats> {
        self.session(&call_id).map(|s| s.stats())
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
    fn session(&self, call_id: &str) -> Option<Arc<dyn MediaSession>> {
        self.sessions.lock().ok()?.get(call_id).cloned()
    }
}

/// A push payload (PUSH.md) as an engine input.
fn push_input(payload: &str) -> Result<Input, ClientError> {
    let bad = |message: &str| ClientError::BadPush {
        message: message.to_string(),
    };
    let v: serde_json::Value = serde_json::from_str(payload).map_err(|_| bad("not JSON"))?;
    let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| bad(k));
    match v["event"].as_str() {
        Some("incoming_call") => Ok(Input::Ring(Ring {
            call_id: text("callId")?,
            from_user_id: text("fromUserId")?,
            video: v["type"] == "video",
            ring_epoch: v["ringEpoch"].as_u64().ok_or_else(|| bad("ringEpoch"))?,
            expires_at: v["expiresAt"].as_u64().ok_or_else(|| bad("expiresAt"))?,
            caller_display_name: text("callerDisplayName").ok(),
        })),
        Some("call_cancelled") => Ok(Input::Cancelled {
            call_id: text("callId")?,
            reason: text("reason")?,
        }),
        _ => Err(bad("event")),
    }
}

/// A call's I/O beyond the engine.
#[derive(Default)]
struct CallIo {
    video: bool,
    join: Option<JoinInfo>,
    rtc: Option<mpsc::UnboundedSender<RtcCommand>>,
}

struct Driver {
    engine: CallEngine,
    started: Instant,
    api: CallApi,
    commands: mpsc::UnboundedSender<Command>,
    config: ClientConfig,
    ports: Ports,
    token: Arc<RwLock<String>>,
    sessions: Arc<Mutex<HashMap<String, Arc<dyn MediaSession>>>>,
    calls: HashMap<String, CallIo>,
    start_reply: Option<(bool, StartReply)>,
    replies: Vec<(StartReply, Result<String, ClientError>)>,
}

type StartReply = oneshot::Sender<Result<String, ClientError>>;

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.register_device().await;
        let (inputs_tx, mut inputs) = mpsc::unbounded_channel();
        let token = self.token.clone();
        let events = crate::events::spawn(
            EventsConfig {
                url: format!("{}/v1/events", ws_base(self.api.base())),
                token: Box::new(move || token.read().map(|t| t.clone()).unwrap_or_default()),
                device_id: self.config.device_id.clone(),
            },
            inputs_tx.clone(),
        );
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
            let next = self.engine.next_timeout().map(|d| self.started + d);
            let far = Instant::now() + Duration::from_secs(3600);
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = tokio::time::sleep_until(next.unwrap_or(far).into()) => {
                    self.engine.handle_timeout(self.started.elapsed());
                    self.execute(&inputs_tx).await;
                    continue;
                }
            };
            match command {
                None => break,
                Some(Command::Shutdown(done)) => {
                    stopped = Some(done);
                    break;
                }
                Some(command) => self.on_command(command, &events).await,
            }
            self.execute(&inputs_tx).await;
        }
        for (call_id, call) in self.calls.drain() {
            if let Some(rtc) = call.rtc {
                let _ = rtc.send(RtcCommand::Leave);
            }
            tracing::info!(call_id = %call_id, device_id = %self.config.device_id, "client shut down");
        }
        let _ = events.send(EventsCommand::Stop);
        // Foreign ports are released here, before `shutdown` returns: a
        // release after the foreign runtime exited would crash it.
        drop(self);
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    async fn on_command(
        &mut self,
        command: Command,
        events: &mpsc::UnboundedSender<EventsCommand>,
    ) {
        let now = self.started.elapsed();
        let wall = crate::unix_millis();
        match command {
            Command::Input(input) => self.engine.handle(input, now, wall),
            Command::StartCall {
                callee,
                video,
                reply,
            } => {
                if self.start_reply.is_some() {
                    let _ = reply.send(Err(ClientError::Refused {
                        code: "call_in_progress".into(),
                        message: "a call is already being started".into(),
                    }));
                    return;
                }
                self.start_reply = Some((video, reply));
                let callee_user_id = callee;
                self.engine.handle(
                    Input::StartCall {
                        callee_user_id,
                        video,
                    },
                    now,
                    wall,
                );
            }
            Command::JoinInfo(info, kind) => {
                let call_id = info.call_id.clone();
                let call_token = info.call_token.clone();
                let call = self.calls.entry(call_id.clone()).or_default();
                call.join = Some(info);
                let input = match kind {
                    JoinKind::Created => {
                        if let Some((video, reply)) = self.start_reply.take() {
                            call.video = video;
                            // Answered once the engine has reported the call.
                            self.replies.push((reply, Ok(call_id.clone())));
                        }
                        Input::Created {
                            call_id,
                            call_token,
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
                self.engine.handle(input, now, wall);
            }
            Command::CreateFailed(e) => {
                if let Some((_, reply)) = self.start_reply.take() {
                    let _ = reply.send(Err(e.into()));
                }
                self.engine.handle(Input::CreateFailed, now, wall);
            }
            Command::RegisterDevice => self.register_device().await,
            Command::NetworkChanged => {
                let _ = events.send(EventsCommand::Reconnect);
                for call in self.calls.values() {
                    if let Some(rtc) = &call.rtc {
                        let _ = rtc.send(RtcCommand::Reconnect);
                    }
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    async fn register_device(&self) {
        let tokens = self.ports.push.current();
        let registered = self.api.register_device(&self.config, &tokens).await;
        if let Err(e) = registered {
            tracing::warn!(device_id = %self.config.device_id, error = %e, "device registration failed");
        }
    }

    /// Carries out the engine's outputs through the ports and the API.
    async fn execute(&mut self, inputs: &mpsc::UnboundedSender<Input>) {
        while let Some(output) = self.engine.poll_output() {
            self.execute_one(output, inputs);
        }
        for (reply, result) in self.replies.drain(..) {
            let _ = reply.send(result);
        }
    }

    fn execute_one(&mut self, output: Output, inputs: &mpsc::UnboundedSender<Input>) {
        let device_id = &self.config.device_id;
        match output {
            Output::ReportIncoming {
                call_id,
                from,
                video,
            } => {
                tracing::info!(call_id = %call_id, device_id = %device_id, "incoming call reported");
                self.calls.entry(call_id.clone()).or_default().video = video;
                self.ports.ui.report_incoming_call(call_id, from, video);
            }
            Output::ReportOutgoingStarted { call_id } => {
                self.ports.ui.report_outgoing_call_started(call_id)
            }
            Output::ReportConnected { call_id } => {
                tracing::info!(call_id = %call_id, device_id = %device_id, "call connected");
                self.ports.ui.report_call_connected(call_id);
            }
            Output::ReportEnded { call_id, reason } => {
                tracing::info!(call_id = %call_id, device_id = %device_id, ?reason, "call ended");
                self.calls.remove(&call_id);
                self.ports.ui.report_call_ended(call_id, reason);
            }
            Output::CreateCall {
                callee_user_id,
                video,
            } => {
                let (api, commands) = (self.api.clone(), self.commands.clone());
                tokio::spawn(async move {
                    let command = match api.create_call(&callee_user_id, video).await {
                        Ok(info) => Command::JoinInfo(info, JoinKind::Created),
                        Err(e) => Command::CreateFailed(e),
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
            Output::Decline { call_id } => self.fire("decline", call_id, |api, id| async move {
                api.decline(&id).await
            }),
            Output::End { call_id } => {
                self.fire("end", call_id, |api, id| async move { api.end(&id).await })
            }
            Output::JoinMedia {
                call_id,
                call_token,
            } => self.join_media(call_id, call_token, inputs),
            Output::RestartIce { call_id } => self.rtc(&call_id, RtcCommand::RestartIce),
            Output::SetMuted { call_id, muted } => {
                if let Some(session) = self
                    .sessions
                    .lock()
                    .ok()
                    .and_then(|s| s.get(&call_id).cloned())
                {
                    session.set_muted(muted);
                }
            }
            Output::LeaveMedia { call_id } => {
                self.rtc(&call_id, RtcCommand::Leave);
                if let Ok(mut sessions) = self.sessions.lock() {
                    sessions.remove(&call_id);
                }
            }
            Output::RouteAudio { route } => self.ports.audio.set_route(route),
        }
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
        inputs: &mpsc::UnboundedSender<Input>,
    ) {
        let call = self.calls.entry(call_id.clone()).or_default();
        if let Some(old) = call.rtc.take() {
            let _ = old.send(RtcCommand::Leave);
        }
        let (ice_servers, rtc_path) = call
            .join
            .as_ref()
            .map(|j| (j.ice_servers.clone(), j.rtc_path.clone()))
            .unwrap_or_else(|| (Vec::new(), "/v1/rtc".into()));
        let (events_tx, media_events) = mpsc::unbounded_channel();
        let session = match self.ports.media.create_session(
            call_id.clone(),
            call.video,
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
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(call_id.clone(), session.clone());
        }
        call.rtc = Some(crate::rtc_session::spawn(RtcSession {
            url: format!("{}{rtc_path}", ws_base(self.api.base())),
            call_id,
            call_token,
            media: session,
            media_events,
            engine: inputs.clone(),
        }));
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
    fn pushes_become_inputs_and_unknown_fields_are_ignored() {
        let ring = r#"{"event":"incoming_call","callId":"c1","fromUserId":"alice","type":"video",
            "timestamp":1,"ttlSeconds":38,"ringEpoch":7,"expiresAt":40000,"modeHint":"sfu",
            "callerDisplayName":"Alice","somethingNew":{"a":1}}"#;
        let Ok(Input::Ring(r)) = push_input(ring) else {
            panic!("a ring")
        };
        assert_eq!(
            (r.call_id.as_str(), r.ring_epoch, r.expires_at, r.video),
            ("c1", 7, 40000, true)
        );
        assert_eq!(r.caller_display_name.as_deref(), Some("Alice"));
        let cancel = r#"{"event":"call_cancelled","callId":"c1","reason":"missed"}"#;
        assert_eq!(
            push_input(cancel),
            Ok(Input::Cancelled {
                call_id: "c1".into(),
                reason: "missed".into()
            })
        );
        for bad in [
            "nope",
            r#"{"event":"incoming_call","callId":"c1"}"#,
            r#"{"event":"something_else","callId":"c1"}"#,
        ] {
            assert!(
                matches!(push_input(bad), Err(ClientError::BadPush { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        assert_eq!(ws_base("http://127.0.0.1:7880"), "ws://127.0.0.1:7880");
        assert_eq!(ws_base("https://calls.example"), "wss://calls.example");
    }
}
