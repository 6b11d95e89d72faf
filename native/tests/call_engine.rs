//! The call engine with a fake clock and fake ports: every report and
//! action it asks for is recorded and checked.

use std::time::Duration;

use native::call_engine::{
    AudioRouteKind, CallEngine, EndedReason, Input, Output, Ring, UnixMillis,
};

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
        d.input(Input::SystemAnswer { call_id: s(call) });
        d.input(Input::Accepted {
            call_id: s(call),
            call_token: s("tok"),
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

#[test]
fn a_duplicate_push_never_reports_a_second_incoming_call() {
    let mut d = Device::new();
    let out = d.input(ring("c1", 7, 30_000));
    assert_eq!(
        out,
        [
            Output::ReportIncoming {
                call_id: s("c1"),
                from: s("Alice"),
                video: true
            },
            Output::Ack { call_id: s("c1") },
        ]
    );
    // The same push again, then the same ring over the WebSocket: nothing new.
    assert!(d.input(ring("c1", 7, 30_000)).is_empty());
    // A re-ring (new epoch) of the call on screen: acknowledged, not reported.
    assert_eq!(
        d.input(ring("c1", 8, 30_000)),
        [Output::Ack { call_id: s("c1") }]
    );
    assert_eq!(d.count(|o| matches!(o, Output::ReportIncoming { .. })), 1);
}

#[test]
fn a_stale_push_is_reported_then_ended_at_once() {
    let mut d = Device::new();
    let out = d.input(ring("c1", 7, -1));
    assert_eq!(
        out,
        [
            Output::ReportIncoming {
                call_id: s("c1"),
                from: s("Alice"),
                video: true
            },
            Output::ReportEnded {
                call_id: s("c1"),
                reason: EndedReason::Missed
            },
        ]
    );
    // A later copy of it is not a new call.
    assert!(d.input(ring("c1", 7, -1)).is_empty());
}

#[test]
fn an_answer_before_the_socket_is_up_waits_for_it_and_media_waits_for_audio() {
    let mut d = Device::new();
    d.input(ring("c1", 7, 30_000));
    // Answered from the lock screen: the app just woke, no socket yet.
    assert!(d.input(Input::SystemAnswer { call_id: s("c1") }).is_empty());
    assert_eq!(
        d.input(Input::SignalingConnected),
        [Output::Accept { call_id: s("c1") }]
    );
    // Accepted, but CallKit has not activated the audio session: no media.
    assert!(
        d.input(Input::Accepted {
            call_id: s("c1"),
            call_token: s("tok")
        })
        .is_empty()
    );
    // Then media joins, the video call's audio on the speaker.
    assert_eq!(
        d.input(Input::AudioSessionActivated),
        [
            Output::RouteAudio {
                route: AudioRouteKind::Speaker
            },
            Output::JoinMedia {
                call_id: s("c1"),
                call_token: s("tok")
            }
        ]
    );
    assert_eq!(
        d.input(Input::MediaConnected { call_id: s("c1") }),
        [Output::ReportConnected { call_id: s("c1") }]
    );
    // A second tap on answer changes nothing.
    assert!(d.input(Input::SystemAnswer { call_id: s("c1") }).is_empty());
}

#[test]
fn the_system_ending_a_connecting_call_ends_it_everywhere() {
    let mut d = Device::answered("c1");
    let out = d.input(Input::SystemEnd { call_id: s("c1") });
    assert_eq!(
        out,
        [
            Output::End { call_id: s("c1") },
            Output::LeaveMedia { call_id: s("c1") },
            Output::ReportEnded {
                call_id: s("c1"),
                reason: EndedReason::Completed
            },
        ]
    );
    // Declining a ringing call is a decline, not an end.
    d.input(ring("c2", 1, 30_000));
    assert_eq!(
        d.input(Input::SystemEnd { call_id: s("c2") }),
        [
            Output::Decline { call_id: s("c2") },
            Output::ReportEnded {
                call_id: s("c2"),
                reason: EndedReason::Declined
            },
        ]
    );
}

#[test]
fn a_cancel_while_ringing_ends_the_ui_with_the_matching_reason() {
    for (reason, expected) in [
        ("answered_elsewhere", EndedReason::AnsweredElsewhere),
        ("declined_elsewhere", EndedReason::DeclinedElsewhere),
        ("missed", EndedReason::Missed),
        ("caller_cancelled", EndedReason::RemoteEnded),
    ] {
        let mut d = Device::new();
        d.input(ring("c1", 7, 30_000));
        let out = d.input(Input::Cancelled {
            call_id: s("c1"),
            reason: s(reason),
        });
        assert_eq!(
            out,
            [Output::ReportEnded {
                call_id: s("c1"),
                reason: expected
            }],
            "{reason}"
        );
        // A late ring for it is not a new call.
        assert!(d.input(ring("c1", 7, 30_000)).is_empty());
    }
}

#[test]
fn a_network_drop_mid_call_restarts_ice_on_reconnect_and_keeps_the_call() {
    let mut d = Device::answered("c1");
    d.input(Input::MediaConnected { call_id: s("c1") });
    assert!(d.input(Input::SignalingDisconnected).is_empty());
    assert!(
        d.advance(Duration::from_secs(60)).is_empty(),
        "connected calls have no deadline"
    );
    assert_eq!(
        d.input(Input::SignalingConnected),
        [Output::RestartIce { call_id: s("c1") }]
    );
    // Media failed for good: rejoin with a fresh token.
    assert_eq!(
        d.input(Input::MediaFailed { call_id: s("c1") }),
        [Output::RequestFreshToken { call_id: s("c1") }]
    );
    assert_eq!(
        d.input(Input::FreshToken {
            call_id: s("c1"),
            call_token: s("tok2")
        }),
        [Output::JoinMedia {
            call_id: s("c1"),
            call_token: s("tok2")
        }]
    );
}

#[test]
fn the_remote_side_ending_leaves_media_and_tells_the_ui() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(Input::AudioSessionActivated);
    d.input(Input::StartCall {
        callee_user_id: s("bob"),
        video: false,
    });
    let out = d.input(Input::Created {
        call_id: s("c9"),
        call_token: s("tok"),
    });
    assert_eq!(
        out,
        [
            Output::ReportOutgoingStarted { call_id: s("c9") },
            Output::RouteAudio {
                route: AudioRouteKind::Earpiece
            },
            Output::JoinMedia {
                call_id: s("c9"),
                call_token: s("tok")
            },
        ]
    );
    // The callee takes 30 s to answer: an outgoing call is not failed by
    // the 20 s connect timeout meanwhile.
    assert!(d.advance(Duration::from_secs(30)).is_empty());
    // Media to the SFU is up before the callee answers: not connected yet.
    assert!(
        d.input(Input::MediaConnected { call_id: s("c9") })
            .is_empty()
    );
    assert_eq!(
        d.input(Input::RemoteAccepted { call_id: s("c9") }),
        [Output::ReportConnected { call_id: s("c9") }]
    );
    assert_eq!(
        d.input(Input::RemoteEnded { call_id: s("c9") }),
        [
            Output::LeaveMedia { call_id: s("c9") },
            Output::ReportEnded {
                call_id: s("c9"),
                reason: EndedReason::Completed
            },
        ]
    );
}

#[test]
fn a_call_that_does_not_connect_in_time_fails() {
    let mut d = Device::answered("c1");
    assert_eq!(d.engine.next_timeout(), Some(Duration::from_secs(20)));
    assert!(d.advance(Duration::from_secs(19)).is_empty());
    assert_eq!(
        d.advance(Duration::from_secs(1)),
        [
            Output::End { call_id: s("c1") },
            Output::LeaveMedia { call_id: s("c1") },
            Output::ReportEnded {
                call_id: s("c1"),
                reason: EndedReason::Failed
            },
        ]
    );
    assert_eq!(d.engine.next_timeout(), None);
}

#[test]
fn an_accept_refused_because_another_device_won_ends_the_ui_so() {
    let mut d = Device::new();
    d.input(Input::SignalingConnected);
    d.input(ring("c1", 7, 30_000));
    d.input(Input::SystemAnswer { call_id: s("c1") });
    assert_eq!(
        d.input(Input::AcceptRefused {
            call_id: s("c1"),
            reason: s("answered_elsewhere")
        }),
        [Output::ReportEnded {
            call_id: s("c1"),
            reason: EndedReason::AnsweredElsewhere
        }]
    );
}
