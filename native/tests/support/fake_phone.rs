//! A phone's platform ports for tests of the client core: a fake CallKit /
//! Telecom, audio session, credentials and call-event sink that record
//! what the core reports, in order. Shared by path with `sfu/tests`.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::{Mutex, OnceLock, Weak};
use std::time::Duration;

use native::client::Client;
use native::ports::{
    AudioRoutes, CallEvents, Credentials, DevicePushTokens, EndedReason, IncomingCall, PortError,
    PushTokens, RemoteTrack, SystemCallUi,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Incoming {
        call_id: String,
        caller: String,
    },
    OutgoingStarted(String),
    Connected(String),
    Ended(String, EndedReason),
    Route(String),
    TokenAsked,
    /// (user, video)
    TrackAdded(String, bool),
    TrackRemoved(String),
    Reconnecting(String),
    Reconnected(String),
    /// The flags as told, sorted by name.
    Flags(Vec<(String, bool)>),
    /// Active speakers' participant ids, loudest first.
    Speakers(Vec<String>),
    /// A data message: (sender's user, payload, reliable).
    Data(Option<String>, String, bool),
}

impl Report {
    /// What the system call UI saw (not routes, tokens, tracks).
    pub fn is_call_ui(&self) -> bool {
        matches!(
            self,
            Report::Incoming { .. }
                | Report::OutgoingStarted(_)
                | Report::Connected(_)
                | Report::Ended(..)
        )
    }
}

/// A fake CallKit / Telecom and audio session recording what the core
/// reports, in order. `route_throws`: its audio route port fails, as a
/// Swift or Kotlin exception would arrive.
#[derive(Default)]
pub struct FakeSystem {
    pub reports: Mutex<Vec<Report>>,
    pub route_throws: bool,
    /// The app's answer to a token request (its backend's fresh token).
    pub fresh_token: Option<String>,
    /// Weak: the app holds the client, the client holds its ports.
    pub client: OnceLock<Weak<Client>>,
}

impl FakeSystem {
    pub fn record(&self, report: Report) {
        self.reports.lock().unwrap().push(report);
    }

    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().unwrap().clone()
    }

    pub fn has(&self, report: &Report) -> bool {
        self.reports().contains(report)
    }
}

impl SystemCallUi for FakeSystem {
    fn report_incoming_call(&self, call: IncomingCall) -> Result<(), PortError> {
        self.record(Report::Incoming {
            call_id: call.call_id,
            caller: call.caller_name,
        });
        Ok(())
    }
    fn report_outgoing_call_started(
        &self,
        call_uuid: String,
        _call_id: String,
    ) -> Result<(), PortError> {
        self.record(Report::OutgoingStarted(call_uuid));
        Ok(())
    }
    fn report_call_connected(&self, call_uuid: String) -> Result<(), PortError> {
        self.record(Report::Connected(call_uuid));
        Ok(())
    }
    fn report_call_ended(&self, call_uuid: String, reason: EndedReason) -> Result<(), PortError> {
        self.record(Report::Ended(call_uuid, reason));
        Ok(())
    }
}

impl AudioRoutes for FakeSystem {
    fn select_route(&self, endpoint_id: String) -> Result<(), PortError> {
        self.record(Report::Route(endpoint_id));
        if self.route_throws {
            return Err("AudioManager refused the route".to_string().into());
        }
        Ok(())
    }
}

impl Credentials for FakeSystem {
    fn refresh_user_token(&self) -> Result<(), PortError> {
        self.record(Report::TokenAsked);
        let client = self.client.get().and_then(Weak::upgrade);
        let (Some(client), Some(token)) = (client, self.fresh_token.clone()) else {
            return Err("signed out".to_string().into());
        };
        // The app's backend answers later, on another thread.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client.set_user_token(token);
        });
        Ok(())
    }
}

impl CallEvents for FakeSystem {
    fn remote_track_added(&self, _call_uuid: String, track: RemoteTrack) -> Result<(), PortError> {
        self.record(Report::TrackAdded(track.user_id, track.video));
        Ok(())
    }
    fn remote_track_removed(&self, _call_uuid: String, track_id: String) -> Result<(), PortError> {
        self.record(Report::TrackRemoved(track_id));
        Ok(())
    }
    fn remote_track_muted(&self, _: String, _: String, _: bool) -> Result<(), PortError> {
        Ok(())
    }
    fn remote_track_paused(&self, _: String, _: String, _: bool) -> Result<(), PortError> {
        Ok(())
    }
    fn call_reconnecting(&self, call_uuid: String) -> Result<(), PortError> {
        self.record(Report::Reconnecting(call_uuid));
        Ok(())
    }
    fn call_reconnected(&self, call_uuid: String) -> Result<(), PortError> {
        self.record(Report::Reconnected(call_uuid));
        Ok(())
    }
    fn flags_changed(
        &self,
        flags: std::collections::HashMap<String, bool>,
    ) -> Result<(), PortError> {
        let mut flags: Vec<(String, bool)> = flags.into_iter().collect();
        flags.sort();
        self.record(Report::Flags(flags));
        Ok(())
    }
    fn active_speakers_changed(
        &self,
        _call_uuid: String,
        speakers: Vec<native::ports::ActiveSpeaker>,
    ) -> Result<(), PortError> {
        let ids = speakers.into_iter().map(|s| s.participant_id).collect();
        self.record(Report::Speakers(ids));
        Ok(())
    }
    fn data_received(
        &self,
        _call_uuid: String,
        message: native::ports::DataMessage,
    ) -> Result<(), PortError> {
        self.record(Report::Data(
            message.user_id,
            message.payload,
            message.reliable,
        ));
        Ok(())
    }
}

pub struct FixedTokens(pub DevicePushTokens);

impl PushTokens for FixedTokens {
    fn current(&self) -> Result<DevicePushTokens, PortError> {
        Ok(self.0.clone())
    }
}
