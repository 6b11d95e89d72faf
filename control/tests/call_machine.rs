//! The call state machine, with a fake clock: tables of requests and what
//! they must do, then a proptest of random interleavings against invariants,
//! on the machine alone and through each store.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;

use control::call::*;
use control::store::{RedisStore, SqliteStore, Store};
use redis_server::RedisServer;

const T0: UnixMillis = 1_764_000_000_000;

fn callee(user: &str, devices: &[&str]) -> Callee {
    Callee {
        user_id: user.into(),
        participant_id: format!("p-{user}"),
        devices: devices.iter().map(|d| d.to_string()).collect(),
        busy: false,
        unsupported: false,
        outdated: Vec::new(),
    }
}

fn one_to_one(devices: &[&str]) -> (Call, Vec<Effect>) {
    Call::create(
        "call-1".into(),
        CallType::Video,
        ("alice".into(), "p-alice".into(), "alice-phone".into()),
        vec![callee("bob", devices)],
        Timeouts::default(),
        T0,
    )
}

fn stops(effects: &[Effect]) -> Vec<(String, StopReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::StopRing {
                device_id, reason, ..
            } => Some((device_id.clone(), *reason)),
            _ => None,
        })
        .collect()
}

fn state_of(call: &Call, user: &str) -> ParticipantState {
    call.participant(user).unwrap().state
}

#[test]
fn outdated_devices_are_told_instead_of_rung() {
    let bob = Callee {
        outdated: vec!["bob-old-phone".into()],
        ..callee("bob", &["bob-tablet"])
    };
    let (call, effects) = Call::create(
        "call-1".into(),
        CallType::Audio,
        ("alice".into(), "p-alice".into(), "alice-phone".into()),
        vec![bob],
        Timeouts::default(),
        T0,
    );
    assert_eq!(call.state, CallState::Ringing);
    assert!(effects.contains(&Effect::Unsupported {
        user_id: "bob".into(),
        device_id: "bob-old-phone".into()
    }));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Ring { device_id, .. } if device_id == "bob-old-phone"))
    );
    // Only outdated devices: told, and the call ends unsupported.
    let only_old = Callee {
        unsupported: true,
        outdated: vec!["bob-old-phone".into()],
        ..callee("bob", &[])
    };
    let (call, effects) = Call::create(
        "call-2".into(),
        CallType::Audio,
        ("alice".into(), "p-alice".into(), "alice-phone".into()),
        vec![only_old],
        Timeouts::default(),
        T0,
    );
    assert_eq!(call.end_reason, Some(EndReason::Unsupported));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Unsupported { .. }))
    );
}

#[test]
fn withdrawn_rings_stop_unsupported_and_end_a_call_nobody_is_left_to_ring() {
    let (mut call, _) = one_to_one(&["bob-phone", "bob-tablet"]);
    let mut effects = Vec::new();
    call.withdraw_rings("bob", &["bob-phone".into()], T0 + 1_000, &mut effects);
    assert_eq!(
        stops(&effects),
        vec![("bob-phone".into(), StopReason::Unsupported)]
    );
    assert_eq!(call.state, CallState::Ringing);
    assert_eq!(state_of(&call, "bob"), ParticipantState::Ringing);
    // Again: nothing more to stop.
    effects.clear();
    call.withdraw_rings("bob", &["bob-phone".into()], T0 + 1_500, &mut effects);
    assert!(effects.is_empty());
    call.withdraw_rings("bob", &["bob-tablet".into()], T0 + 2_000, &mut effects);
    assert_eq!(call.state, CallState::Ended);
    assert_eq!(call.end_reason, Some(EndReason::Unsupported));
    assert_eq!(state_of(&call, "bob"), ParticipantState::Missed);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Event(CallEvent::Missed { .. })))
    );

    // An answered call is not touched.
    let (mut call, _) = one_to_one(&["bob-phone"]);
    call.accept("bob", "bob-phone", T0 + 500, &mut Vec::new())
        .unwrap();
    let mut effects = Vec::new();
    call.withdraw_rings("bob", &["bob-phone".into()], T0 + 1_000, &mut effects);
    assert!(effects.is_empty());
    assert_eq!(call.state, CallState::Connecting);
}

#[test]
fn create_rings_every_device_of_the_callee() {
    let (call, effects) = one_to_one(&["bob-phone", "bob-tablet"]);
    assert_eq!(call.state, CallState::Ringing);
    assert_eq!(call.ring_deadline, Some(T0 + 40_000));
    let rung: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Ring { device_id, .. } => Some(device_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(rung, vec!["bob-phone", "bob-tablet"]);
    assert_eq!(state_of(&call, "bob"), ParticipantState::Ringing);
}

#[test]
fn first_accept_wins_and_the_other_devices_are_cancelled() {
    let (mut call, _) = one_to_one(&["bob-phone", "bob-tablet", "bob-web"]);
    let mut fx = Vec::new();
    assert_eq!(
        call.accept("bob", "bob-tablet", T0 + 3_000, &mut fx),
        Ok(Accepted::Now)
    );
    assert_eq!(call.state, CallState::Connecting);
    assert_eq!(call.connect_deadline, Some(T0 + 23_000));
    assert_eq!(
        stops(&fx),
        vec![
            ("bob-phone".into(), StopReason::AnsweredElsewhere),
            ("bob-web".into(), StopReason::AnsweredElsewhere)
        ]
    );
    let mut again = Vec::new();
    assert_eq!(
        call.accept("bob", "bob-tablet", T0 + 3_100, &mut again),
        Ok(Accepted::Already)
    );
    assert!(again.is_empty());
    assert_eq!(
        call.accept("bob", "bob-phone", T0 + 3_100, &mut again),
        Err(CallError::AnsweredElsewhere)
    );
    assert!(again.is_empty());
}

#[test]
fn decline_ends_a_one_to_one_call_and_cancels_the_other_devices() {
    let (mut call, _) = one_to_one(&["bob-phone", "bob-tablet"]);
    let mut fx = Vec::new();
    call.decline("bob", "bob-phone", T0 + 2_000, &mut fx)
        .unwrap();
    assert_eq!(call.state, CallState::Ended);
    assert_eq!(call.end_reason, Some(EndReason::Declined));
    assert_eq!(
        stops(&fx),
        vec![("bob-tablet".into(), StopReason::DeclinedElsewhere)]
    );
}

#[test]
fn caller_cancel_before_answer_and_not_after() {
    let (mut call, _) = one_to_one(&["bob-phone"]);
    let mut fx = Vec::new();
    assert_eq!(call.cancel("bob", T0, &mut fx), Err(CallError::WrongRole));
    call.cancel("alice", T0 + 1_000, &mut fx).unwrap();
    assert_eq!(call.end_reason, Some(EndReason::CallerCancelled));
    assert_eq!(state_of(&call, "bob"), ParticipantState::Missed);
    assert_eq!(
        stops(&fx),
        vec![("bob-phone".into(), StopReason::CallerCancelled)]
    );

    let (mut call, _) = one_to_one(&["bob-phone"]);
    call.accept("bob", "bob-phone", T0 + 1_000, &mut fx)
        .unwrap();
    assert_eq!(
        call.cancel("alice", T0 + 2_000, &mut fx),
        Err(CallError::AlreadyAnswered)
    );
    assert_eq!(call.state, CallState::Connecting);
}

#[test]
fn nobody_answers_the_ring_times_out_as_missed() {
    let (mut call, _) = one_to_one(&["bob-phone"]);
    let mut fx = Vec::new();
    call.handle_timeout(T0 + 39_999, &mut fx);
    assert_eq!(call.state, CallState::Ringing);
    call.handle_timeout(T0 + 40_000, &mut fx);
    assert_eq!(call.end_reason, Some(EndReason::Timeout));
    assert_eq!(state_of(&call, "bob"), ParticipantState::Missed);
    assert_eq!(stops(&fx), vec![("bob-phone".into(), StopReason::Missed)]);
    assert_eq!(call.next_deadline(), None);
}

#[test]
fn media_must_connect_in_time_after_accept() {
    let (mut call, _) = one_to_one(&["bob-phone"]);
    let mut fx = Vec::new();
    call.accept("bob", "bob-phone", T0 + 1_000, &mut fx)
        .unwrap();
    call.media_connected("alice", T0 + 1_500, &mut fx);
    assert_eq!(call.next_deadline(), Some(T0 + 21_000));
    call.handle_timeout(T0 + 21_000, &mut fx);
    assert_eq!(call.end_reason, Some(EndReason::Failed));
}

#[test]
fn connected_when_both_are_in_media_and_completed_when_one_leaves() {
    let (mut call, _) = one_to_one(&["bob-phone"]);
    let mut fx = Vec::new();
    call.media_connected("alice", T0 + 100, &mut fx); // the caller joins at once
    assert_eq!(call.state, CallState::Ringing);
    call.accept("bob", "bob-phone", T0 + 1_000, &mut fx)
        .unwrap();
    call.media_connected("bob", T0 + 1_400, &mut fx);
    assert_eq!(call.state, CallState::Connected);
    assert_eq!(call.connected_at, Some(T0 + 1_400));
    assert_eq!(call.next_deadline(), None, "a connected call has no timer");
    call.media_left("bob", T0 + 60_000, &mut fx);
    assert_eq!(call.end_reason, Some(EndReason::Completed));
    assert_eq!(call.ended_at, Some(T0 + 60_000));
}

#[test]
fn after_a_restart_a_connected_call_needs_its_participants_back() {
    let connected = || {
        let (mut call, _) = one_to_one(&["bob-phone"]);
        let mut fx = Vec::new();
        call.accept("bob", "bob-phone", T0, &mut fx).unwrap();
        call.media_connected("alice", T0, &mut fx);
        call.media_connected("bob", T0, &mut fx);
        assert_eq!(call.state, CallState::Connected);
        call
    };
    let mut fx = Vec::new();
    // Both come back within the grace period: it stays connected.
    let mut call = connected();
    call.media_restarted(T0 + 10_000, 15_000);
    assert_eq!(call.next_deadline(), Some(T0 + 25_000));
    call.media_connected("alice", T0 + 12_000, &mut fx);
    call.media_connected("bob", T0 + 13_000, &mut fx);
    assert_eq!(call.next_deadline(), None);
    call.handle_timeout(T0 + 30_000, &mut fx);
    assert_eq!(call.state, CallState::Connected);
    // Only one comes back: it fails at the end of the grace period.
    let mut call = connected();
    call.media_restarted(T0 + 10_000, 15_000);
    call.media_connected("alice", T0 + 12_000, &mut fx);
    call.handle_timeout(T0 + 25_000, &mut fx);
    assert_eq!(call.end_reason, Some(EndReason::Failed));
}

#[test]
fn a_busy_callee_or_one_without_devices_ends_the_call_at_once() {
    let mut busy = callee("bob", &["bob-phone"]);
    busy.busy = true;
    let (call, fx) = Call::create(
        "c".into(),
        CallType::Audio,
        ("alice".into(), "p-a".into(), "d-a".into()),
        vec![busy],
        Timeouts::default(),
        T0,
    );
    assert_eq!(call.end_reason, Some(EndReason::Busy));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Ring { .. })));

    let (call, _) = one_to_one(&[]);
    assert_eq!(call.end_reason, Some(EndReason::NoDevices));
}

#[test]
fn group_call_goes_on_when_one_callee_declines() {
    let (mut call, _) = Call::create(
        "g".into(),
        CallType::Video,
        ("alice".into(), "p-a".into(), "d-a".into()),
        vec![callee("bob", &["b1"]), callee("carol", &["c1"])],
        Timeouts::default(),
        T0,
    );
    let mut fx = Vec::new();
    call.decline("bob", "b1", T0 + 1_000, &mut fx).unwrap();
    assert_eq!(call.state, CallState::Ringing);
    call.accept("carol", "c1", T0 + 2_000, &mut fx).unwrap();
    assert_eq!(call.state, CallState::Connecting);
}

#[test]
fn strangers_and_wrong_roles_are_refused_and_change_nothing() {
    let (mut call, _) = one_to_one(&["bob-phone"]);
    let before = call.clone();
    let mut fx = Vec::new();
    assert_eq!(
        call.accept("mallory", "m", T0, &mut fx),
        Err(CallError::NotParticipant)
    );
    assert_eq!(
        call.accept("alice", "alice-phone", T0, &mut fx),
        Err(CallError::WrongRole)
    );
    assert_eq!(
        call.accept("bob", "not-rung", T0, &mut fx),
        Err(CallError::UnknownDevice)
    );
    assert_eq!(
        call.decline("alice", "alice-phone", T0, &mut fx),
        Err(CallError::WrongRole)
    );
    assert_eq!(
        call.end("mallory", T0, &mut fx),
        Err(CallError::NotParticipant)
    );
    assert_eq!(
        call.acknowledge_ring("bob", "nope", T0),
        Err(CallError::UnknownDevice)
    );
    assert_eq!(call, before);
    assert!(fx.is_empty());
}

mod interleavings {
    use super::*;
    use proptest::prelude::*;

    const USERS: [&str; 3] = ["alice", "bob", "carol"];
    const DEVICES: [&str; 3] = ["d0", "d1", "d2"];

    #[derive(Debug, Clone)]
    enum Op {
        Accept(usize, usize),
        Decline(usize, usize),
        Cancel(usize),
        End(usize),
        Ack(usize, usize),
        MediaConnected(usize),
        MediaLeft(usize),
        /// The server restarted: rooms are empty; 5 s of grace.
        Restarted,
        /// A participant in the SFU's reconnecting grace period: the machine
        /// is not told, and the call must go on regardless.
        Reconnecting,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let u = 0..USERS.len();
        let d = 0..DEVICES.len();
        prop_oneof![
            (u.clone(), d.clone()).prop_map(|(u, d)| Op::Accept(u, d)),
            (u.clone(), d.clone()).prop_map(|(u, d)| Op::Decline(u, d)),
            u.clone().prop_map(Op::Cancel),
            u.clone().prop_map(Op::End),
            (u.clone(), d).prop_map(|(u, d)| Op::Ack(u, d)),
            u.clone().prop_map(Op::MediaConnected),
            u.prop_map(Op::MediaLeft),
            Just(Op::Reconnecting),
            Just(Op::Restarted),
            (0u64..30_000).prop_map(Op::Advance),
        ]
    }

    /// Applies `op`; the result is compared when the op is replayed.
    fn apply(call: &mut Call, op: &Op, now: &mut UnixMillis, fx: &mut Vec<Effect>) -> String {
        let user = |i: usize| USERS[i];
        let dev = |u: usize, d: usize| format!("{}-{}", USERS[u], DEVICES[d]);
        match *op {
            Op::Accept(u, d) => format!("{:?}", call.accept(user(u), &dev(u, d), *now, fx)),
            Op::Decline(u, d) => format!("{:?}", call.decline(user(u), &dev(u, d), *now, fx)),
            Op::Cancel(u) => format!("{:?}", call.cancel(user(u), *now, fx)),
            Op::End(u) => format!("{:?}", call.end(user(u), *now, fx)),
            Op::Ack(u, d) => format!("{:?}", call.acknowledge_ring(user(u), &dev(u, d), *now)),
            Op::MediaConnected(u) => {
                call.media_connected(user(u), *now, fx);
                String::new()
            }
            Op::MediaLeft(u) => {
                call.media_left(user(u), *now, fx);
                String::new()
            }
            Op::Reconnecting => String::new(),
            Op::Restarted => {
                call.media_restarted(*now, 5_000);
                String::new()
            }
            Op::Advance(ms) => {
                *now += ms;
                call.handle_timeout(*now, fx);
                String::new()
            }
        }
    }

    fn check_invariants(call: &Call, stop_effects: &HashMap<(String, String), usize>) {
        if call.state == CallState::Ended {
            assert!(call.end_reason.is_some(), "ended without a reason");
            assert!(call.ended_at.is_some());
            assert_eq!(call.next_deadline(), None);
        } else {
            assert!(call.end_reason.is_none());
        }
        if call.state == CallState::Ringing {
            assert!(call.ring_deadline.is_some(), "ringing with no timer");
        }
        for p in &call.participants {
            let answered = p
                .rings
                .iter()
                .filter(|r| r.state == RingState::Answered)
                .count();
            assert!(
                answered <= 1,
                "{} answered on {answered} devices",
                p.user_id
            );
            if p.state == ParticipantState::Accepted && p.role == Role::Member {
                let holder = p.device_id.as_deref().expect("accepted on a device");
                assert!(
                    p.rings
                        .iter()
                        .any(|r| r.device_id == holder && r.state == RingState::Answered)
                );
            }
            if p.state != ParticipantState::Ringing {
                for r in &p.rings {
                    assert!(
                        r.state.is_done(),
                        "{} {} still ringing",
                        p.user_id,
                        r.device_id
                    );
                }
            }
            for r in &p.rings {
                let told = stop_effects
                    .get(&(p.user_id.clone(), r.device_id.clone()))
                    .copied()
                    .unwrap_or(0);
                let stopped = usize::from(matches!(r.state, RingState::Stopped(_)));
                assert_eq!(
                    told, stopped,
                    "{} {}: {told} stop effects",
                    p.user_id, r.device_id
                );
            }
        }
    }

    /// One random case: the call created, then `ops` applied one by one,
    /// each checked against the invariants and replayed. With a store, every
    /// op goes the way the API takes it: read the call, apply, write back by
    /// compare-and-set; the stored call must be exactly what the machine
    /// made, one version later.
    /// Returns the call as it ends.
    fn run_case(
        group: bool,
        ops: &[Op],
        store: Option<(&dyn Store, &str)>,
    ) -> Result<Call, TestCaseError> {
        let mut callees = vec![callee("bob", &["bob-d0", "bob-d1", "bob-d2"])];
        if group {
            callees.push(callee("carol", &["carol-d0", "carol-d1"]));
        }
        let call_id = store.map_or("c", |(_, id)| id);
        let (mut call, effects) = Call::create(
            call_id.into(),
            CallType::Video,
            ("alice".into(), "p-alice".into(), "alice-d0".into()),
            callees,
            Timeouts::default(),
            T0,
        );
        if let Some((store, _)) = store {
            store.insert_call(&call).unwrap();
        }
        // Through the store: read, apply, write back if it changed. The
        // next read checks the write (the same call, one version later).
        let version = std::cell::Cell::new(1);
        let step = |call: &mut Call,
                    op: &Op,
                    now: &mut UnixMillis,
                    fx: &mut Vec<Effect>|
         -> Result<String, TestCaseError> {
            let Some((store, id)) = store else {
                return Ok(apply(call, op, now, fx));
            };
            let read = store.get_call(id).unwrap().unwrap();
            prop_assert_eq!(&read.value, &*call, "the store returned another call");
            prop_assert_eq!(read.version, version.get());
            let result = apply(call, op, now, fx);
            if *call != read.value {
                prop_assert!(store.update_call(call, read.version).unwrap());
                version.set(read.version + 1);
            }
            Ok(result)
        };
        let mut now = T0;
        let mut stop_effects: HashMap<(String, String), usize> = HashMap::new();
        let count = |fx: &[Effect], stop_effects: &mut HashMap<(String, String), usize>| {
            for e in fx {
                if let Effect::StopRing {
                    user_id, device_id, ..
                } = e
                {
                    *stop_effects
                        .entry((user_id.clone(), device_id.clone()))
                        .or_default() += 1;
                }
            }
        };
        count(&effects, &mut stop_effects);
        check_invariants(&call, &stop_effects);
        for op in ops {
            let before = call.clone();
            let mut fx = Vec::new();
            let result = step(&mut call, op, &mut now, &mut fx)?;
            count(&fx, &mut stop_effects);
            check_invariants(&call, &stop_effects);
            if before.state == CallState::Ended {
                prop_assert_eq!(&call, &before, "an ended call changed");
            }
            // A replayed request changes nothing and answers the same.
            if !matches!(op, Op::Advance(_) | Op::Restarted) {
                let after = call.clone();
                let mut again = Vec::new();
                let mut t = now;
                let replayed = step(&mut call, op, &mut t, &mut again)?;
                prop_assert_eq!(&call, &after, "replaying {:?} changed the call", op);
                prop_assert!(
                    again.is_empty(),
                    "replaying {:?} had effects {:?}",
                    op,
                    again
                );
                let same = replayed == result || (result == "Ok(Now)" && replayed == "Ok(Already)");
                prop_assert!(same, "replaying {:?}: {} then {}", op, result, replayed);
            }
        }
        Ok(call)
    }

    fn cases() -> impl Strategy<Value = (bool, Vec<Op>)> {
        (any::<bool>(), prop::collection::vec(op(), 1..40))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn random_interleavings_keep_every_invariant((group, ops) in cases()) {
            run_case(group, &ops, None)?;
        }
    }

    /// Cases run through each store: as many as through the machine alone.
    /// Each op is two round trips to Redis (~15 ms a case in a debug
    /// build), so the stores run side by side.
    const STORE_CASES: u32 = 10_000;

    /// Random cases through each store: SQLite (in memory) and a real Redis.
    /// Each case is its own call.
    #[test]
    fn random_interleavings_through_each_store_keep_every_invariant() {
        let redis = RedisServer::start();
        let stores: [(&str, Box<dyn Store>); 2] = [
            ("sqlite", Box::new(SqliteStore::in_memory().unwrap())),
            (
                "redis",
                Box::new(RedisStore::connect(&redis.url(), "interleavings").unwrap()),
            ),
        ];
        std::thread::scope(|scope| {
            for (name, store) in &stores {
                scope.spawn(move || interleave_through(name, &**store));
            }
        });
    }

    fn interleave_through(name: &str, store: &dyn Store) {
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(STORE_CASES));
        let case = std::sync::atomic::AtomicUsize::new(0);
        let live = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let outcome = runner.run(&cases(), |(group, ops)| {
            let id = format!(
                "case-{}",
                case.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let call = run_case(group, &ops, Some((store, &id)))?;
            let stored = store.get_call(&id).unwrap().unwrap().value;
            prop_assert_eq!(&stored, &call, "the last write");
            if call.state != CallState::Ended {
                live.lock().unwrap().insert(id);
            }
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{name}: {e}");
        }
        // The index of live calls (recovery, busy checks) holds exactly
        // the calls that did not end.
        let indexed: std::collections::BTreeSet<String> = store
            .live_calls()
            .unwrap()
            .into_iter()
            .map(|c| c.value.call_id)
            .collect();
        assert_eq!(indexed, *live.lock().unwrap(), "{name}: live calls");
    }
}
