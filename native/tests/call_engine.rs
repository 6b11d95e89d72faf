//! The call engine with a fake clock and fake ports: every report and
//! action it asks for is recorded and checked.

use std::time::Duration;

use native::call_engine::{
    ActiveCall, ActiveCallState, AudioRouteKind, AudioRouteState, CallEngine, CallReport,
    EndedReason, IncomingCall, Input, Output, Quality, Ring, TrackChange, UnixMillis,
};
use native::ports::{
    AudioEndpoint, CallKitEndedReason, RemoteTrack, TelecomDisconnectCause, callkit_ended_reason,
    telecom_disconnect_cause,
};
use native::push::{PushDecision, parse_json};

/// Server call ids are UUIDs: the system UI knows the call by the same.
const C1: &str = "0b9f5c3e-1d2a-4c8b-9e7f-6a5b4c3d2e1f";
const C2: &str = "1c8e4b2d-0e3f-4a7c-8d6e-5f4a3b2c1d0e";
const C9: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
/// The UUID an app chose for its outgoing call before the server named it.
const LOCAL: &str = "F00DF00D-0000-4000-8000-000000000001";

const WALL: UnixMillis = 1_800_000_000_000;

struct Device {
    engine: CallEngine,
    now: Duration,
    outputs: Vec<Output>,
}

impl Device {
    fn new() -> Device {
        Device {
            engine: CallEngine::new(),
            now: Duration::ZERO,
            outputs: Vec::new(),
        }
    }

    /// Signaling up, audio active, "c1"-like call rung, answered and
    /// accepted with token "tok": joining media.
    fn answered(call: &str) -> Device {
        let mut d = Device::new();
        d.input(Input::SignalingConnected);
        d.input(Input::AudioSessionActivated);
        d.input(ring(call, 7, 30_000));
        d.input(Input::SystemAnswer { call_uuid: s(call) });
        d.input(Input::Accepted {
            call_id: s(call),
            call_token: s("tok"),
        });
        d
    }

    /// Signaling up, an outgoing audio call (the app's `LOCAL` UUID)
    /// created as `call` and ringing the callee: not answered yet.
    fn calling(call: &str) -> Device {
        let mut d = Device::new();
        d.input(Input::SignalingConnected);
        d.input(Input::StartCall {
            call_uuid: s(LOCAL),
            callee_user_id: s("bob"),
            video: false,
        });
        d.input(Input::Created {
            call_uuid: LOCAL.to_lowercase(),
            call_id: s(call),
            call_token: s("tok"),
            answered: false,
        });
        d
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.engine
            .handle(input, self.now, WALL + self.now.as_millis() as u64);
        self.drain()
    }

    fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.now += by;
        self.engine.handle_timeout(self.now);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            out.push(o);
        }
        self.outputs.extend(out.clone());
        out
    }

    fn count(&self, f: impl Fn(&Output) -> bool) -> usize {
        self.outputs.iter().filter(|o| f(o)).count()
    }

    /// A push as the platform hands it over; the device's clock agrees
    /// with the server's unless `offset` says otherwise.
    fn push(&mut self, payload: &str, offset: Option<i64>) -> PushDecision {
        let device_now = WALL + self.now.as_millis() as u64;
        let decision = self
            .engine
            .on_push(parse_json(payload), self.now, device_now, offset);
        self.drain();
        decision
    }
}

fn ring_push(call: &str, epoch: u64, expires_in_ms: i64) -> String {
    format!(
        r#"{{"event":"incoming_call","callId":"{call}","fromUserId":"alice","type":"video",
            "timestamp":{WALL},"ttlSeconds":30,"ringEpoch":{epoch},"expiresAt":{},
            "callerDisplayName":"Alice","modeHint":"sfu"}}"#,
        WALL as i64 + expires_in_ms
    )
}

fn shown(call: &str) -> IncomingCall {
    IncomingCall {
        call_uuid: s(call),
        call_id: s(call),
        caller_name: s("Alice"),
        handle: s("alice"),
        video: true,
        avatar_url: None,
    }
}

fn ended(call: &str, reason: EndedReason) -> Output {
    Output::ReportEnded {
        call_uuid: s(call),
        call_id: Some(s(call)),
        reason,
    }
}

fn ring(call: &str, epoch: u64, expires_in_ms: i64) -> Input {
    Input::Ring(Ring {
        call_id: call.into(),
        from_user_id: "alice".into(),
        video: true,
        ring_epoch: epoch,
        expires_at: (WALL as i64 + expires_in_ms) as u64,
        caller_display_name: Some("Alice".into()),
    })
}

fn s(x: &str) -> String {
    x.to_string()
}

/// A phone's audio endpoints: earpiece and speaker, plus `extra`, with
/// `current` in use.
fn routes(extra: &[(&str, AudioRouteKind)], current: &str) -> Input {
    let mut endpoints = vec![
        endpoint("earpiece", AudioRouteKind::Earpiece),
        endpoint("speaker", AudioRouteKind::Speaker),
    ];
    endpoints.extend(extra.iter().map(|(id, kind)| endpoint(id, *kind)));
    Input::AudioRoutesChanged(AudioRouteState {
        endpoints,
        current_id: Some(s(current)),
    })
}

fn endpoint(id: &str, kind: AudioRouteKind) -> AudioEndpoint {
    AudioEndpoint {
        id: s(id),
        kind,
        name: id.to_uppercase(),
    }
}

fn select(id: &str) -> Output {
    Output::SelectAudioRoute { endpoint_id: s(id) }
}

#[test]
fn every_push_is_reported_once_and_a_duplicate_gets_the_same_uuid() {
    let mut d = Device::new();
    let first = d.push(&ring_push(C1, 7, 30_000), Some(0));
    assert_eq!(first, PushDecision::Report { call: shown(C1) });
    // The platform reported it itself: the engine asks for no report, and
    // the server hears "shown" only once the system confirms.
    assert!(d.outputs.is_empty(), "{:?}", d.outputs);
    assert_eq!(
        d.input(Input::IncomingCallDisplayed {
            call_uuid: C1.to_uppercase()
        }),
        [Output::Ack { call_id: s(C1) }]
    );
    // The same push again (APNs redelivered it): reported with the same
    // UUID, not ended, still ringing.
    assert_eq!(
        d.push(&ring_push(C1, 7, 30_000), Some(0)),
        PushDecision::Report { call: shown(C1) }
    );
    // And the socket's copy of the ring: nothing new on screen.
    assert_eq!(
        d.input(ring(C1, 0, 30_000)),
        [Output::Ack { call_id: s(C1) }]
    );
    assert_eq!(d.count(|o| matches!(o, Output::ReportIncoming { .. })), 0);
    assert_eq!(d.count(|o| matches!(o, Output::ReportEnded { .. })), 0);
    // Still answerable.
    d.input(Input::SignalingConnected);
    let out = d.input(Input::SystemAnswer { call_uuid: s(C1) });
    assert_eq!(out.last(), Some(&Output::Accept { call_id: s(C1) }));
}

#[test]
fn late_expired_and_already_ended_pushes_are_reported_and_ended() {
    let mut d = Device::new();
    // Expired by the server's clock, although the phone's clock is an
    // hour behind.
    let hour = 3_600_000i64;
    assert_eq!(
        d.push(&ring_push(C1, 7, -5_000), Some(hour)),
        PushDecision::ReportAndEnd {
            call: shown(C1),
            reason: EndedReason::Unanswered
        }
    );
    // A phone whose clock runs an hour fast still rings a fresh call.
    assert_eq!(
        d.push(&ring_push(C2, 1, 30_000), Some(-hour)),
        PushDecision::Report { call: shown(C2) }
    );
    // Cancelled over the socket, then the push arrives late: reported and
    // ended with why it ended.
    d.input(Input::Cancelled {
        call_id: s(C9),
        reason: s("answered_elsewhere"),
    });
    assert_eq!(
        d.push(&ring_push(C9, 1, 30_000), Some(0)),
        PushDecision::ReportAndEnd {
            call: shown(C9),
            reason: EndedReason::AnsweredElsewhere
        }
    );
    // A ring that lost its fields is still something iOS must report.
    assert!(matches!(
        d.push(
            &format!(r#"{{"event":"incoming_call","callId":"{C1}x"}}"#),
            None
        ),
        PushDecision::ReportAndEnd {
            reason: EndedReason::Failed,
            ..
        }
    ));
    // A cancel push shows nothing and ends the ringing call.
    assert!(matches!(
        d.push(
            &format!(r#"{{"event":"call_cancelled","callId":"{C2}","reason":"caller_cancelled"}}"#),
            None
        ),
        PushDecision::NotACall { .. }
    ));
    assert_eq!(
        d.outputs.last(),
        Some(&ended(C2, EndedReason::CallerCancelled))
    );
}

#[test]
fn a_call_the_system_refused_is_not_declined_so_other_devices_keep_ringing() {
    let mut d = Device::new();
    d.push(&ring_push(C1, 7, 30_000), Some(0));
    let out = d.input(Input::IncomingCallFailed {
        call_uuid: s(C1),
        reason: s("filtered_by_do_not_disturb"),
    });
    // Only the server's telemetry hears of it.
    assert_eq!(
        out,
        [Output::Report {
            call_id: s(C1),
            report: CallReport::SystemUiError {
                code: s("filtered_by_do_not_disturb")
            }
        }]
    );
    assert_eq!(
        d.count(|o| matches!(o, Output::Decline { .. } | Output::Ack { .. })),
        0
    );
    // Its later copies stay ended here.
    assert!(matches!(
        d.push(&ring_push(C1, 7, 30_000), Some(0)),
        PushDecision::ReportAndEnd { .. }
    ));
}

#[test]
fn a_socket_ring_is_reported_and_acknowledged_once_displayed() {
    let mut d = Device::new();
    let out = d.input(ring(C1, 7, 30_000));
    assert_eq!(out, [Output::ReportIncoming { call: shown(C1) }]);
    // The same ring again, or its push: never a second incoming call.
    assert!(d.input(ring(C1, 7, 30_000)).is_empty());
    assert_eq!(
        d.push(&ring_push(C1, 7, 30_000), Some(0)),
        PushDecision::Report { call: shown(C1) }
    );
    assert_eq!(
        d.input(Input::IncomingCallDisplayed { call_uuid: s(C1) }),
        [Output::Ack { call_id: s(C1) }]
    );
    assert!(
        d.input(Input::IncomingCallDisplayed { call_uuid: s(C1) })
            .is_empty()
    );
    assert_eq!(d.count(|o| matches!(o, Output::ReportIncoming { .. })), 1);
}

/// The server's flags reach the app once per change; with video off a
/// video call the user starts goes out as audio, and with the call UI off
/// a ring that crossed the change is not shown.
#[test]
fn flags_are_told_once_per_change_and_honoured() {
    let mut d = Device::new();
    let flags = |video: bool, ui: bool| -> std::collections::HashMap<String, bool> {
        [
            ("calling".to_string(), true),
            ("incoming_call_ui".to_string(), ui),
            ("video_calls".to_string(), video),
        ]
        .into()
    };
    assert_eq!(
        d.input(Input::Flags(flags(false, true))),
        [Output::FlagsChanged {
            flags: flags(false, true)
        }]
    );
    assert!(d.input(Input::Flags(flags(false, true))).is_empty());
    let out = d.input(Input::StartCall {
        call_uuid: s(C1),
        callee_user_id: s("bob"),
        video: true,
    });
    assert_eq!(
        out,
        [Output::CreateCall {
            call_uuid: s(C1),
            callee_user_id: s("bob"),
            video: false,
        }]
    );

    let mut d = Device::new();
    d.input(Input::Flags(flags(true, false)));
    assert!(d.input(ring(C2, 7, 30_000)).is_empty(), "no call UI");
    d.input(Input::Flags(flags(true, true)));
    assert_eq!(
        d.input(ring(C2, 7, 30_000)),
        [Output::ReportIncoming { call: shown(C2) }]
    );
}

/// The room's active speakers reach the app for a call it has, under
/// its UUID, and nothing for a call it does not.
#[test]
fn active_speakers_reach_the_app_for_its_own_calls() {
    let mut d = Device::answered(C1);
    let speakers = vec![native::ports::ActiveSpeaker {
        participant_id: s("PA_alice"),
        user_id: Some(s("alice")),
        level: 0.04,
    }];
    assert_eq!(
        d.input(Input::ActiveSpeakers {
            call_id: s(C1),
            speakers: speakers.clone(),
        }),
        [Output::ReportActiveSpeakers {
            call_uuid: s(C1),
            speakers: speakers.clone(),
        }]
    );
    assert!(
        d.input(Input::ActiveSpeakers {
            call_id: s(C2),
            speakers,
        })
        .is_empty()
    );
}

#[test]
fn a_stale_socket_ring_is_reported_then_ended_at_once() {
    let mut d = Device::new();
    let out = d.input(ring(C1, 7, -1));
    assert_eq!(
        out,
        [
            Output::ReportIncoming { call: shown(C1) },
            ended(C1, EndedReason::Unanswered),
        ]
    );
    // A later copy of it is not a new call.
    assert!(d.input(ring(C1, 7, -1)).is_empty());
}

#[test]
fn an_answer_before_the_socket_is_up_waits_for_it_and_media_waits_for_audio() {
    let mut d = Device::new();
    d.input(routes(&[], "earpiece"));
    d.push(&ring_push(C1, 7, 30_000), Some(0));
    // Answered from the lock screen: the app just woke, no socket yet.
    assert!(d.input(Input::SystemAnswer { call_uuid: s(C1) }).is_empty());
    assert_eq!(
        d.input(Input::SignalingConnected),
        [Output::Accept { call_id: s(C1) }]
    );
    // Accepted, but CallKit has not activated the audio session: no media.
    assert!(
        d.input(Input::Accepted {
            call_id: s(C1),
            call_token: s("tok")
        })
        .is_empty()
    );
    // Then media joins, the video call's audio on the speaker.
    assert_eq!(
        d.input(Input::AudioSessionActivated),
        [
            Output::JoinMedia {
                call_id: s(C1),
                call_token: s("tok"),
                video: true
            },
            select("speaker"),
        ]
    );
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s(C1) }),
        [Output::ReportConnected { call_uuid: s(C1) }]
    );
    // A second tap on answer changes nothing.
    assert!(d.input(Input::SystemAnswer { call_uuid: s(C1) }).is_empty());
}

#[test]
fn hold_is_not_mute_and_unhold_restores_the_users_mute() {
    let mut d = Device::answered(C1);
    d.input(Input::MediaConnected { call_id: s(C1) });
    assert_eq!(
        d.input(Input::SystemMute {
            call_uuid: s(C1),
            muted: true
        }),
        [Output::SetMuted {
            call_id: s(C1),
            muted: true
        }]
    );
    assert_eq!(
        d.input(Input::SystemHold {
            call_uuid: s(C1),
            held: true
        }),
        [
            Output::SetHeld {
                call_id: s(C1),
                held: true
            },
            Output::SetMuted {
                call_id: s(C1),
                muted: true
            }
        ]
    );
    // Unmuting while held changes the user's choice, not the microphone.
    assert!(
        d.input(Input::SystemMute {
            call_uuid: s(C1),
            muted: false
        })
        .is_empty()
    );
    assert_eq!(
        d.input(Input::SystemHold {
            call_uuid: s(C1),
            held: false
        }),
        [
            Output::SetHeld {
                call_id: s(C1),
                held: false
            },
            Output::SetMuted {
                call_id: s(C1),
                muted: false
            }
        ]
    );
    // Held again with the user unmuted, then unheld: unmuted again.
    d.input(Input::SystemHold {
        call_uuid: s(C1),
        held: true,
    });
    assert_eq!(
        d.input(Input::SystemHold {
            call_uuid: s(C1),
            held: false
        }),
        [
            Output::SetHeld {
                call_id: s(C1),
                held: false
            },
            Output::SetMuted {
                call_id: s(C1),
                muted: false
            }
        ]
    );
}

#[test]
fn the_system_ending_a_connecting_call_ends_it_everywhere() {
    let mut d = Device::answered(C1);
    let out = d.input(Input::SystemEnd { call_uuid: s(C1) });
    assert_eq!(
        out,
        [
            Output::End { call_id: s(C1) },
            Output::LeaveMedia { call_id: s(C1) },
            ended(C1, EndedReason::LocalEnded),
        ]
    );
    // Declining a ringing call is a decline, not an end.
    d.input(ring(C2, 1, 30_000));
    assert_eq!(
        d.input(Input::SystemEnd { call_uuid: s(C2) }),
        [
            Output::Decline { call_id: s(C2) },
            ended(C2, EndedReason::Declined),
        ]
    );
}

#[test]
fn a_system_reset_ends_calls_in_progress_on_the_server_but_declines_nothing() {
    let mut d = Device::answered(C1);
    d.push(&ring_push(C2, 1, 30_000), Some(0));
    let out = d.input(Input::SystemReset);
    assert_eq!(
        out,
        [
            Output::LeaveMedia { call_id: s(C1) },
            Output::End { call_id: s(C1) },
        ]
    );
    assert!(d.input(ring(C2, 1, 30_000)).is_empty(), "over here");
}

#[test]
fn a_cancel_while_ringing_ends_the_ui_with_the_matching_reason() {
    for (reason, expected) in [
        ("answered_elsewhere", EndedReason::AnsweredElsewhere),
        ("declined_elsewhere", EndedReason::DeclinedElsewhere),
        ("missed", EndedReason::Unanswered),
        ("caller_cancelled", EndedReason::CallerCancelled),
        ("call_ended", EndedReason::RemoteEnded),
        ("a_reason_from_a_newer_server", EndedReason::RemoteEnded),
    ] {
        let mut d = Device::new();
        d.input(ring(C1, 7, 30_000));
        let out = d.input(Input::Cancelled {
            call_id: s(C1),
            reason: s(reason),
        });
        assert_eq!(out, [ended(C1, expected)], "{reason}");
        // A late ring for it is not a new call.
        assert!(d.input(ring(C1, 7, 30_000)).is_empty());
    }
}

#[test]
fn end_reasons_map_to_callkit_and_core_telecom_as_the_readme_says() {
    use CallKitEndedReason as Ck;
    use TelecomDisconnectCause as Tc;
    let table = [
        (EndedReason::LocalEnded, None, Tc::Local),
        (EndedReason::Declined, None, Tc::Rejected),
        (EndedReason::RemoteEnded, Some(Ck::RemoteEnded), Tc::Remote),
        (
            EndedReason::CallerCancelled,
            Some(Ck::RemoteEnded),
            Tc::Missed,
        ),
        (EndedReason::Unanswered, Some(Ck::Unanswered), Tc::Missed),
        (
            EndedReason::AnsweredElsewhere,
            Some(Ck::AnsweredElsewhere),
            Tc::Remote,
        ),
        (
            EndedReason::DeclinedElsewhere,
            Some(Ck::DeclinedElsewhere),
            Tc::Rejected,
        ),
        (EndedReason::Failed, Some(Ck::Failed), Tc::Local),
    ];
    for (reason, callkit, telecom) in table {
        assert_eq!(callkit_ended_reason(reason), callkit, "{reason:?}");
        assert_eq!(telecom_disconnect_cause(reason), telecom, "{reason:?}");
    }
    // CallKit's raw values.
    assert_eq!(Ck::Failed as u8, 1);
    assert_eq!(Ck::DeclinedElsewhere as u8, 5);
    // The committed table in the README says the same.
    let readme = include_str!("../README.md");
    for (reason, callkit, telecom) in table {
        let row = format!(
            "| `{reason:?}` | {} | `{}` |",
            callkit.map_or("(fulfil the `CXEndCallAction`)".to_string(), |c| format!(
                "`.{}`",
                lower_first(&format!("{c:?}"))
            )),
            format!("{telecom:?}").to_uppercase()
        );
        assert!(readme.contains(&row), "README lacks the row {row}");
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or(String::new(), |f| {
        f.to_lowercase().collect::<String>() + c.as_str()
    })
}

#[test]
fn a_network_drop_mid_call_restarts_ice_on_reconnect_and_keeps_the_call() {
    let mut d = Device::answered(C1);
    d.input(Input::MediaConnected { call_id: s(C1) });
    assert!(d.input(Input::SignalingDisconnected).is_empty());
    assert!(
        d.advance(Duration::from_secs(60)).is_empty(),
        "connected calls have no deadline"
    );
    assert_eq!(
        d.input(Input::SignalingConnected),
        [Output::RestartIce { call_id: s(C1) }]
    );
    // Media failed for good: rejoin with a fresh token; the app shows
    // the call reconnecting, then reconnected (not connected a second time).
    assert_eq!(
        d.input(Input::MediaFailed { call_id: s(C1) }),
        [
            Output::RequestFreshToken { call_id: s(C1) },
            Output::ReportReconnecting { call_uuid: s(C1) }
        ]
    );
    assert_eq!(
        d.input(Input::FreshToken {
            call_id: s(C1),
            call_token: s("tok2")
        }),
        [Output::JoinMedia {
            call_id: s(C1),
            call_token: s("tok2"),
            video: true
        }]
    );
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s(C1) }),
        [Output::ReportReconnected { call_uuid: s(C1) }]
    );
}

#[test]
fn a_dropped_media_path_is_reported_reconnecting_once_then_reconnected() {
    let mut d = Device::answered(C1);
    // Before it ever connected, a drop is not a reconnection.
    assert!(
        d.input(Input::MediaReconnecting { call_id: s(C1) })
            .is_empty()
    );
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s(C1) }),
        [Output::ReportConnected { call_uuid: s(C1) }]
    );
    assert_eq!(
        d.input(Input::MediaReconnecting { call_id: s(C1) }),
        [Output::ReportReconnecting { call_uuid: s(C1) }]
    );
    assert!(
        d.input(Input::MediaReconnecting { call_id: s(C1) })
            .is_empty(),
        "once until it is back"
    );
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s(C1) }),
        [Output::ReportReconnected { call_uuid: s(C1) }]
    );
    assert!(d.input(Input::MediaConnected { call_id: s(C1) }).is_empty());
}

#[test]
fn remote_tracks_reach_the_app_only_while_the_call_is_here() {
    let mut d = Device::answered(C1);
    let track = RemoteTrack {
        track_id: s("TR_1"),
        participant_id: s("PA_1"),
        user_id: s("alice"),
        video: true,
        mid: s("1"),
        muted: false,
    };
    let change = TrackChange::Added(track);
    assert_eq!(
        d.input(Input::RemoteTrack {
            call_id: s(C1),
            change: change.clone()
        }),
        [Output::ReportRemoteTrack {
            call_uuid: s(C1),
            change: change.clone()
        }]
    );
    d.input(Input::RemoteEnded { call_id: s(C1) });
    assert!(
        d.input(Input::RemoteTrack {
            call_id: s(C1),
            change
        })
        .is_empty(),
        "nothing after the call ended"
    );
}

#[test]
fn a_connected_headset_is_never_overridden_by_the_default_route() {
    // AirPods in use: a video call keeps them (no speaker).
    let mut d = Device::new();
    d.input(routes(&[("airpods", AudioRouteKind::Bluetooth)], "airpods"));
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    d.input(ring(C1, 7, 30_000));
    d.input(Input::SystemAnswer { call_uuid: s(C1) });
    let out = d.input(Input::Accepted {
        call_id: s(C1),
        call_token: s("tok"),
    });
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::SelectAudioRoute { .. })),
        "{out:?}"
    );

    // A wired headset plugged in but the earpiece current: the headset.
    let wired = routes(&[("wired", AudioRouteKind::WiredHeadset)], "earpiece");
    let mut d = Device::answered(C2);
    assert_eq!(d.input(wired), [select("wired")]);
}

#[test]
fn the_default_route_waits_for_the_endpoints_and_is_chosen_once_per_call() {
    // Android: Core-Telecom reports endpoints after the call was added.
    let mut d = Device::answered(C1);
    assert!(
        !d.outputs
            .iter()
            .any(|o| matches!(o, Output::SelectAudioRoute { .. })),
        "no endpoints known yet"
    );
    assert_eq!(d.input(routes(&[], "earpiece")), [select("speaker")]);
    // The route changes again (the system, or the user in Control Center):
    // not overridden a second time.
    assert!(d.input(routes(&[], "earpiece")).is_empty());
    // The user picks from the app's route list; an endpoint the platform
    // never reported is ignored.
    assert_eq!(
        d.input(Input::SelectAudioRoute {
            endpoint_id: s("earpiece")
        }),
        [select("earpiece")]
    );
    assert!(
        d.input(Input::SelectAudioRoute {
            endpoint_id: s("hdmi")
        })
        .is_empty()
    );
}

#[test]
fn a_crossed_call_carries_on_as_the_outgoing_call_and_the_ring_leaves_the_ui() {
    // Alice's call C1 rings here while Bob, at the same moment, calls Alice.
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    assert_eq!(
        d.push(&ring_push(C1, 7, 30_000), Some(0)),
        PushDecision::Report { call: shown(C1) }
    );
    d.input(Input::IncomingCallDisplayed { call_uuid: s(C1) });
    let local = LOCAL.to_lowercase();
    d.input(Input::StartCall {
        call_uuid: s(LOCAL),
        callee_user_id: s("alice"),
        video: true,
    });
    // The server made Bob's create the answer to Alice's call.
    let out = d.input(Input::Created {
        call_uuid: local.clone(),
        call_id: s(C1),
        call_token: s("tok"),
        answered: true,
    });
    assert_eq!(
        out,
        [
            ended(C1, EndedReason::AnsweredElsewhere),
            Output::ReportOutgoingStarted {
                call_uuid: local.clone(),
                call_id: s(C1)
            },
            Output::JoinMedia {
                call_id: s(C1),
                call_token: s("tok"),
                video: true
            },
        ]
    );
    assert_eq!(
        d.count(|o| matches!(o, Output::Decline { .. })),
        0,
        "the crossed call is not declined"
    );
    // Alice is in the call already: connected as soon as media is up.
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s(C1) }),
        [Output::ReportConnected {
            call_uuid: local.clone()
        }]
    );
    // A late push or socket ring of C1 is the call in progress, not a new one.
    let late = d.push(&ring_push(C1, 7, 30_000), Some(0));
    assert!(
        matches!(&late, PushDecision::Report { call } if call.call_uuid == local),
        "{late:?}"
    );
    assert!(d.input(ring(C1, 7, 30_000)).is_empty());
}

#[test]
fn a_crossed_call_answered_before_its_ring_arrived_never_rings() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    let local = LOCAL.to_lowercase();
    d.input(Input::StartCall {
        call_uuid: s(LOCAL),
        callee_user_id: s("alice"),
        video: true,
    });
    d.input(Input::Created {
        call_uuid: local.clone(),
        call_id: s(C1),
        call_token: s("tok"),
        answered: true,
    });
    let push = d.push(&ring_push(C1, 7, 30_000), Some(0));
    assert!(
        matches!(&push, PushDecision::Report { call } if call.call_uuid == local),
        "{push:?}"
    );
    assert!(d.input(ring(C1, 7, 30_000)).is_empty());
    assert_eq!(d.count(|o| matches!(o, Output::ReportIncoming { .. })), 0);
}

#[test]
fn an_outgoing_call_is_known_by_the_apps_uuid_before_and_after_the_server_names_it() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    d.input(routes(&[], "speaker"));
    let local = LOCAL.to_lowercase();
    assert_eq!(
        d.input(Input::StartCall {
            call_uuid: s(LOCAL),
            callee_user_id: s("bob"),
            video: false,
        }),
        [Output::CreateCall {
            call_uuid: local.clone(),
            callee_user_id: s("bob"),
            video: false
        }]
    );
    let out = d.input(Input::Created {
        call_uuid: local.clone(),
        call_id: s(C9),
        call_token: s("tok"),
        answered: false,
    });
    assert_eq!(
        out,
        [
            Output::ReportOutgoingStarted {
                call_uuid: local.clone(),
                call_id: s(C9)
            },
            Output::JoinMedia {
                call_id: s(C9),
                call_token: s("tok"),
                video: false
            },
            select("earpiece"),
        ]
    );
    assert_eq!(d.engine.call_id_of(LOCAL), Some(s(C9)));
    // The callee takes 30 s to answer: an outgoing call is not failed by
    // the 20 s connect timeout meanwhile.
    assert!(d.advance(Duration::from_secs(30)).is_empty());
    // Media to the SFU is up before the callee answers: not connected yet.
    assert!(d.input(Input::MediaConnected { call_id: s(C9) }).is_empty());
    assert_eq!(
        d.input(Input::RemoteAccepted { call_id: s(C9) }),
        [Output::ReportConnected {
            call_uuid: local.clone()
        }]
    );
    assert_eq!(
        d.input(Input::RemoteEnded { call_id: s(C9) }),
        [
            Output::LeaveMedia { call_id: s(C9) },
            Output::ReportEnded {
                call_uuid: local,
                call_id: Some(s(C9)),
                reason: EndedReason::RemoteEnded
            },
        ]
    );
}

#[test]
fn an_answer_heard_before_the_create_response_is_not_lost() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    let local = LOCAL.to_lowercase();
    d.input(Input::StartCall {
        call_uuid: s(LOCAL),
        callee_user_id: s("bob"),
        video: false,
    });
    // The events socket outran the (retried) create response.
    assert!(d.input(Input::RemoteAccepted { call_id: s(C9) }).is_empty());
    // An answer to a call nobody here is creating is not kept.
    assert!(
        d.input(Input::RemoteAccepted {
            call_id: s("someone-elses")
        })
        .is_empty()
    );
    d.input(Input::Created {
        call_uuid: local.clone(),
        call_id: s(C9),
        call_token: s("tok"),
        answered: false,
    });
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s(C9) }),
        [Output::ReportConnected { call_uuid: local }]
    );
}

#[test]
fn without_an_answer_media_alone_does_not_connect_an_outgoing_call() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    d.input(Input::StartCall {
        call_uuid: s(LOCAL),
        callee_user_id: s("bob"),
        video: false,
    });
    // An answer to another call, before ours was created, is no answer to ours.
    d.input(Input::RemoteAccepted {
        call_id: s("c-other"),
    });
    d.input(Input::Created {
        call_uuid: LOCAL.to_lowercase(),
        call_id: s(C9),
        call_token: s("tok"),
        answered: false,
    });
    assert!(d.input(Input::MediaConnected { call_id: s(C9) }).is_empty());
}

#[test]
fn an_outgoing_call_the_server_refused_ends_failed() {
    let mut d = Device::new();
    d.input(Input::StartCall {
        call_uuid: s(LOCAL),
        callee_user_id: s("bob"),
        video: true,
    });
    assert_eq!(
        d.input(Input::CreateFailed {
            call_uuid: LOCAL.to_lowercase()
        }),
        [Output::ReportEnded {
            call_uuid: LOCAL.to_lowercase(),
            call_id: None,
            reason: EndedReason::Failed
        }]
    );
}

#[test]
fn a_call_that_does_not_connect_in_time_fails() {
    let mut d = Device::answered(C1);
    assert_eq!(d.engine.next_timeout(), Some(Duration::from_secs(20)));
    assert!(d.advance(Duration::from_secs(19)).is_empty());
    assert_eq!(
        d.advance(Duration::from_secs(1)),
        [
            Output::Report {
                call_id: s(C1),
                report: CallReport::MediaFailed {
                    reason: "connect_timeout"
                }
            },
            Output::End { call_id: s(C1) },
            Output::LeaveMedia { call_id: s(C1) },
            ended(C1, EndedReason::Failed),
        ]
    );
    assert_eq!(d.engine.next_timeout(), None);
}

#[test]
fn an_accept_refused_because_another_device_won_ends_the_ui_so() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(ring(C1, 7, 30_000));
    d.input(Input::SystemAnswer { call_uuid: s(C1) });
    assert_eq!(
        d.input(Input::AcceptRefused {
            call_id: s(C1),
            reason: s("answered_elsewhere")
        }),
        [ended(C1, EndedReason::AnsweredElsewhere)]
    );
}

#[test]
fn active_calls_tell_a_ui_that_loads_late_where_each_call_is() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    d.input(ring(C1, 1, 30_000));
    let local = LOCAL.to_lowercase();
    d.input(Input::StartCall {
        call_uuid: s(LOCAL),
        callee_user_id: s("bob"),
        video: false,
    });
    let state_of = |d: &Device, uuid: &str| -> ActiveCall {
        d.engine
            .active_calls()
            .into_iter()
            .find(|c| c.call_uuid == uuid)
            .expect("listed")
    };
    assert_eq!(
        state_of(&d, C1),
        ActiveCall {
            call_uuid: s(C1),
            call_id: Some(s(C1)),
            remote_user_id: s("alice"),
            outgoing: false,
            video: true,
            state: ActiveCallState::Ringing,
            muted: false,
            held: false,
        }
    );
    let creating = state_of(&d, &local);
    assert_eq!(
        (
            creating.call_id,
            creating.remote_user_id.as_str(),
            creating.outgoing,
            creating.state
        ),
        (None, "bob", true, ActiveCallState::Outgoing)
    );
    assert_eq!(d.engine.call_uuid_of(C9), None, "not named yet");

    d.input(Input::Created {
        call_uuid: local.clone(),
        call_id: s(C9),
        call_token: s("tok"),
        answered: false,
    });
    d.input(Input::MediaConnected { call_id: s(C9) });
    assert_eq!(
        state_of(&d, &local).state,
        ActiveCallState::Outgoing,
        "bob has not answered"
    );
    assert_eq!(d.engine.call_uuid_of(C9), Some(local.clone()));
    d.input(Input::RemoteAccepted { call_id: s(C9) });
    assert_eq!(state_of(&d, &local).state, ActiveCallState::Connected);
    d.input(Input::SystemMute {
        call_uuid: local.clone(),
        muted: true,
    });
    d.input(Input::MediaReconnecting { call_id: s(C9) });
    let reconnecting = state_of(&d, &local);
    assert_eq!(
        (reconnecting.state, reconnecting.muted),
        (ActiveCallState::Reconnecting, true)
    );

    d.input(Input::SystemAnswer { call_uuid: s(C1) });
    assert_eq!(state_of(&d, C1).state, ActiveCallState::Connecting);
    d.input(Input::RemoteEnded { call_id: s(C9) });
    assert_eq!(
        d.engine
            .active_calls()
            .iter()
            .map(|c| c.call_uuid.as_str())
            .collect::<Vec<_>>(),
        [C1],
        "an ended call is no longer listed"
    );
}

fn reports(outputs: &[Output]) -> Vec<CallReport> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Report { report, .. } => Some(report.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_callee_reports_answering_and_first_media_from_its_own_clock_once_each() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    d.input(ring(C1, 7, 30_000));
    d.now += Duration::from_millis(400);
    d.input(Input::IncomingCallDisplayed { call_uuid: s(C1) });
    d.now += Duration::from_millis(3_100);
    let out = d.input(Input::SystemAnswer { call_uuid: s(C1) });
    assert_eq!(
        reports(&out),
        [CallReport::AnsweredOnDevice {
            after_ui_shown_ms: 3_100
        }]
    );
    d.input(Input::Accepted {
        call_id: s(C1),
        call_token: s("tok"),
    });
    d.now += Duration::from_millis(850);
    let first_audio = Input::FirstMedia {
        call_id: s(C1),
        video: false,
    };
    assert_eq!(
        reports(&d.input(first_audio.clone())),
        [CallReport::FirstAudio {
            after_accept_ms: 850
        }]
    );
    // A platform that says it twice is reported once.
    assert!(reports(&d.input(first_audio)).is_empty());
    d.now += Duration::from_millis(300);
    let out = d.input(Input::FirstMedia {
        call_id: s(C1),
        video: true,
    });
    assert_eq!(
        reports(&out),
        [CallReport::FirstVideo {
            after_accept_ms: 1_150
        }]
    );
    let quality = Quality {
        loss_ratio: 0.01,
        jitter_ms: 9.0,
        rtt_ms: Some(40.0),
    };
    let out = d.input(Input::MediaQuality {
        call_id: s(C1),
        quality,
    });
    assert_eq!(reports(&out), [CallReport::Quality(quality)]);
    // Telecom refused to add the call (a notification rings instead): the
    // server hears why, and the call goes on.
    let out = d.input(Input::SystemUiError {
        call_uuid: s(C1),
        code: s("error_call_not_permitted_at_present_time"),
    });
    assert_eq!(
        out,
        [Output::Report {
            call_id: s(C1),
            report: CallReport::SystemUiError {
                code: s("error_call_not_permitted_at_present_time")
            }
        }]
    );
    // Nothing about calls that are not here.
    let out = d.input(Input::MediaQuality {
        call_id: s(C9),
        quality,
    });
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_caller_whose_media_plays_before_the_answer_event_reports_it_at_once() {
    let mut d = Device::calling(C9);
    d.now += Duration::from_secs(5);
    // The callee's audio overtook the `call.accepted` event.
    let out = d.input(Input::FirstMedia {
        call_id: s(C9),
        video: false,
    });
    assert!(reports(&out).is_empty(), "not before the answer is known");
    d.now += Duration::from_millis(120);
    let out = d.input(Input::RemoteAccepted { call_id: s(C9) });
    assert_eq!(
        reports(&out),
        [CallReport::FirstAudio { after_accept_ms: 0 }]
    );
}

#[test]
fn an_outgoing_call_nobody_answered_is_not_reported_as_a_media_failure() {
    let mut d = Device::calling(C9);
    let out = d.advance(Duration::from_secs(90));
    assert!(out.contains(&Output::End { call_id: s(C9) }), "{out:?}");
    assert!(reports(&out).is_empty(), "{out:?}");
}
