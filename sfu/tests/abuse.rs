//! Attacks on the real `switchboard` process (loopback only, bounded), each
//! reproducing a defect found by probing it (issue 12): the attack must now
//! fail with a typed answer and the server must stay healthy, with other
//! calls unaffected.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::live::{
    PROCESS_CALL_TOKEN_SECRET, ServerProcess, free_port, grant, request, scratch_dir,
    spawn_switchboard,
};
use control::call_token::{CallGrant, CallTokens, DEFAULT_TTL};
use signaling::client::SignalingClient;
use signaling::{ClientMessage, ErrorCode, PeerTarget, Permissions, ServerMessage};

fn tokens() -> CallTokens {
    CallTokens::new(
        PROCESS_CALL_TOKEN_SECRET.as_bytes(),
        "switchboard",
        DEFAULT_TTL,
    )
}

async fn spawn(env: &[(&str, &str)]) -> ServerProcess {
    spawn_switchboard(&scratch_dir(), free_port(), free_port(), env).await
}

async fn metrics(server: &ServerProcess) -> String {
    request(server.http, "GET", "/metrics", &[], "").await.1
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/healthz` answers 200 within `limit`.
async fn assert_healthy(server: &ServerProcess, limit: Duration) {
    let started = Instant::now();
    let (status, body) = request(server.http, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < limit,
        "healthz took {:?}",
        started.elapsed()
    );
}

/// Joins `room` as `name`; returns the socket and the server's first
/// subscriber offer.
async fn join(server: &ServerProcess, room: &str, name: &str) -> (SignalingClient, String) {
    join_with(server, room, name, Permissions::ALL).await
}

async fn join_with(
    server: &ServerProcess,
    room: &str,
    name: &str,
    permissions: Permissions,
) -> (SignalingClient, String) {
    let url = format!("ws://{}/v1/rtc", server.http);
    let mut ws = SignalingClient::connect(&url).await.unwrap();
    let join = ClientMessage::Join {
        protocol_version: signaling::PROTOCOL_VERSION,
        token: tokens().mint(&CallGrant {
            permissions,
            ..grant(room, name)
        }),
        auto_subscribe: true,
        resume_participant_id: None,
    };
    ws.send(&join).await.unwrap();
    let offer = recv_until(&mut ws, |m| match m {
        ServerMessage::SubscriberOffer { sdp, .. } => Some(sdp.clone()),
        _ => None,
    })
    .await;
    (ws, offer)
}

/// The first message `pick` takes, within 10 s.
async fn recv_until<T>(
    ws: &mut SignalingClient,
    mut pick: impl FnMut(&ServerMessage) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.recv())
            .await
            .expect("an answer within 10 s")
            .expect("the socket stays open");
        if let Some(t) = pick(&message) {
            return t;
        }
    }
}

async fn expect_error(ws: &mut SignalingClient, code: ErrorCode) {
    let got = recv_until(ws, |m| match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(got, code);
}

/// Every occurrence of the first `a=ice-ufrag` value in `sdp` (the ufrag
/// line and candidates' `ufrag` extensions) replaced by `ufrag`.
fn with_ufrag(sdp: &str, ufrag: &str) -> String {
    let old = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("the SDP has a ufrag");
    sdp.replace(old, ufrag)
}

/// A client's offer and answer to `server_offer`, written by str0m.
fn client_sdp(server_offer: &str) -> (String, String) {
    use str0m::media::{Direction, MediaKind};
    let now = Instant::now();
    let mut publisher = str0m::Rtc::builder().build(now);
    let host = str0m::Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap();
    publisher.add_local_candidate(host.clone());
    let mut api = publisher.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let mut subscriber = str0m::Rtc::builder().build(now);
    subscriber.add_local_candidate(host);
    let server_offer = str0m::change::SdpOffer::from_sdp_string(server_offer).unwrap();
    let answer = subscriber.sdp_api().accept_offer(server_offer).unwrap();
    (offer.to_sdp_string(), answer.to_sdp_string())
}

/// Item 1: a 200-character ICE ufrag (valid under RFC 8839) in an offer, a
/// subscriber answer, a trickled candidate or a STUN request used to panic
/// the engine shard inside str0m, killing every room on it. Now each is
/// refused with a typed error; a call on the same shard keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ice_ufrag_is_refused_and_the_shard_lives() {
    // One shard: the attacker and the bystanders share it.
    let server = spawn(&[("SWITCHBOARD_ENGINE_THREADS", "1")]).await;
    let url = format!("ws://{}/v1/rtc", server.http);
    let run = Duration::from_secs(6);
    let bystanders: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let (url, token) = (url.clone(), tokens().mint(&grant("calm", name)));
            tokio::spawn(async move { common::live::run_bot(name, &url, token, run).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let long = "u".repeat(200);
    let (mut ws, server_offer) = join(&server, "attack", "mallory").await;
    let (offer, answer) = client_sdp(&server_offer);
    let publish = ClientMessage::Publish {
        sdp: with_ufrag(&offer, &long),
    };
    ws.send(&publish).await.unwrap();
    expect_error(&mut ws, ErrorCode::InvalidSdp).await;
    let subscriber_answer = ClientMessage::SubscriberAnswer {
        sdp: with_ufrag(&answer, &long),
    };
    ws.send(&subscriber_answer).await.unwrap();
    expect_error(&mut ws, ErrorCode::InvalidSdp).await;
    let trickle = ClientMessage::Trickle {
        target: PeerTarget::Publisher,
        candidate: signaling::IceCandidate {
            candidate: format!("candidate:1 1 udp 2130706431 127.0.0.1 9 typ host ufrag {long}"),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        },
    };
    ws.send(&trickle).await.unwrap();
    expect_error(&mut ws, ErrorCode::InvalidCandidate).await;
    // A STUN Binding request naming the server's ufrag and a long remote one.
    let server_ufrag = server_offer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let media_port = server_offer
        .lines()
        .find_map(|l| l.strip_prefix("a=candidate:"))
        .and_then(|c| c.split(' ').nth(5)?.parse::<u16>().ok())
        .unwrap();
    udp.send_to(
        &stun_binding_request(&format!("{server_ufrag}:{long}")),
        ("127.0.0.1", media_port),
    )
    .await
    .unwrap();

    // The attacker's own connection still works.
    ws.send(&ClientMessage::Ping { timestamp: 7 })
        .await
        .unwrap();
    recv_until(&mut ws, |m| {
        matches!(m, ServerMessage::Pong { .. }).then_some(())
    })
    .await;
    for task in bystanders {
        let bot = task.await.unwrap();
        let other = if bot.name == "a" { "p-b" } else { "p-a" };
        let got = bot.received_from(other);
        // About 6 s of audio and video; a shard dead at 1.5 s gives far less.
        assert!(
            got > 150,
            "{} received {got} packets from {other}",
            bot.name
        );
    }
    assert_healthy(&server, Duration::from_secs(2)).await;
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "switchboard_engine_panics_total{scope=\"shard\"}"),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_engine_panics_total{scope=\"participant\"}"
        ),
        0.0
    );
}

/// A STUN Binding request with USERNAME `username`, PRIORITY and no
/// integrity (RFC 8489 framing).
fn stun_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |typ: u16, value: &[u8]| {
        attrs.extend_from_slice(&typ.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(value);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    };
    attr(0x0006, username.as_bytes());
    attr(0x0024, &2_130_706_431u32.to_be_bytes());
    let mut message = Vec::new();
    message.extend_from_slice(&0x0001u16.to_be_bytes());
    message.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    message.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    let id = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[7, 7, 7, 7]);
    message.extend_from_slice(&attrs);
    message
}

/// Resident memory of `pid` in KiB (`/proc`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A TURN Allocate request (REQUESTED-TRANSPORT UDP, no credentials): 28 bytes.
fn turn_allocate(n: u32) -> [u8; 28] {
    let mut m = [0u8; 28];
    m[0..2].copy_from_slice(&0x0003u16.to_be_bytes());
    m[2..4].copy_from_slice(&8u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    m[20..22].copy_from_slice(&0x0019u16.to_be_bytes());
    m[22..24].copy_from_slice(&4u16.to_be_bytes());
    m[24] = 17;
    m
}

/// Item 2: a TCP client that sends Allocate requests and never reads grew
/// the server's memory ~6x what it sent (each 28-byte request queued a
/// 116-byte 401). Now its outbox is bounded: the server hangs up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_tcp_client_that_never_reads_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let turn_port = free_port();
    let listen = format!("127.0.0.1:{turn_port}");
    let server = spawn(&[
        ("SWITCHBOARD_TURN_UDP_LISTEN", &listen),
        ("SWITCHBOARD_TURN_TCP_LISTEN", &listen),
    ])
    .await;
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut stream = tokio::net::TcpStream::connect(&listen).await.unwrap();
    // Up to 8 MiB of requests in 64 KiB writes, for at most 30 s.
    let batch: Vec<u8> = (0..2340).flat_map(turn_allocate).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0usize;
    let mut cut_off = false;
    while sent < 8 << 20 && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            // Blocked: the server stopped reading us.
            Err(_) => break,
        }
    }
    let grew = rss_kib(pid).saturating_sub(before);
    assert!(
        cut_off,
        "the server kept the connection after {sent} bytes of requests"
    );
    assert!(
        grew < 16 * 1024,
        "RSS grew {grew} KiB for {sent} bytes sent"
    );
    assert_healthy(&server, Duration::from_secs(2)).await;
    let text = metrics(&server).await;
    assert!(
        metric(
            &text,
            "switchboard_turn_dropped_total{reason=\"stream_client_not_reading\"}"
        ) >= 1.0,
        "{text}"
    );
}

async fn create_call(server: &ServerProcess, caller: &str, callees: &[String]) -> (u16, String) {
    let auth = format!("Bearer {}", common::live::user_token(caller));
    let body = serde_json::json!({
        "calleeUserIds": callees,
        "type": "audio",
        "deviceId": format!("{caller}-phone"),
    });
    request(
        server.http,
        "POST",
        "/v1/calls",
        &[("Authorization", &auth)],
        &body.to_string(),
    )
    .await
}

/// Item 3: a create naming 20,000 callees charged the ring limiter for each
/// before the 1-16 check; two at once stalled `/healthz` for up to 29 s.
/// Now the body is refused before anything is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_with_thousands_of_callees_is_refused_at_once() {
    let server = spawn(&[]).await;
    let callees: Vec<String> = (0..20_000).map(|i| format!("victim-{i}")).collect();
    let attacks: Vec<_> = (0..2)
        .map(|_| {
            let (http, callees) = (server.http, callees.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let auth = format!("Bearer {}", common::live::user_token("mallory"));
                let body = serde_json::json!({
                    "calleeUserIds": callees, "type": "audio", "deviceId": "m-phone",
                });
                let (status, body) = request(
                    http,
                    "POST",
                    "/v1/calls",
                    &[("Authorization", &auth)],
                    &body.to_string(),
                )
                .await;
                (status, body, started.elapsed())
            })
        })
        .collect();
    for _ in 0..5 {
        assert_healthy(&server, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for attack in attacks {
        let (status, body, took) = attack.await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("1-16 callees"), "{body}");
        assert!(took < Duration::from_secs(3), "refused after {took:?}");
    }
    // Nothing was charged: a real call to one of them goes through.
    let (status, body) = create_call(&server, "alice", &["victim-7".into()]).await;
    assert_eq!(status, 201, "{body}");
}

/// Item 4: a create that was refused (429, 400) still spent the callee's
/// calls-to-this-user budget, so anyone could keep anyone from being called;
/// `["bob","bob"]` made a call with two bobs. Now duplicates are refused and
/// limits are charged only for calls created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_creates_spend_no_ones_budget() {
    let server = spawn(&[
        ("SWITCHBOARD_CALLS_TO_ONE_USER_PER_MINUTE", "3"),
        ("SWITCHBOARD_API_REQUESTS_PER_SECOND", "1000"),
    ])
    .await;
    let victim = "victim".to_string();
    for _ in 0..20 {
        let (status, body) = create_call(&server, "mallory", &vec![victim.clone(); 21]).await;
        assert_eq!(status, 400, "{body}");
        let (status, body) =
            create_call(&server, "mallory", &[victim.clone(), victim.clone()]).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("named twice"), "{body}");
        // Valid up to the last callee, who is the caller: refused whole.
        let (status, body) =
            create_call(&server, "mallory", &[victim.clone(), "mallory".into()]).await;
        assert_eq!(status, 400, "{body}");
    }
    // The victim's budget is whole: three real calls, then the limit.
    for caller in ["alice", "bob", "carol"] {
        let (status, body) = create_call(&server, caller, std::slice::from_ref(&victim)).await;
        assert_eq!(status, 201, "{caller}: {body}");
    }
    let (status, body) = create_call(&server, "dave", std::slice::from_ref(&victim)).await;
    assert_eq!(status, 429, "{body}");
}

/// An offer from str0m sending `kinds`, every m-line after the first moved
/// to port 0 with `a=bundle-only` (RFC 8843: still sending, on the BUNDLE
/// transport).
fn bundle_only_offer(kinds: &[str0m::media::MediaKind]) -> String {
    use str0m::media::Direction;
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let host = str0m::Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap();
    rtc.add_local_candidate(host);
    let mut api = rtc.sdp_api();
    for kind in kinds {
        api.add_media(*kind, Direction::SendOnly, None, None, None);
    }
    let (offer, _) = api.apply().unwrap();
    let sdp = offer.to_sdp_string();
    let mut out = String::new();
    for (i, section) in sdp.split("\r\nm=").enumerate() {
        match i {
            0 => out.push_str(section),
            1 => out.push_str(&format!("\r\nm={section}")),
            _ => {
                let (m_line, rest) = section.split_once("\r\n").unwrap();
                let mut fields: Vec<&str> = m_line.split(' ').collect();
                fields[1] = "0";
                out.push_str(&format!(
                    "\r\nm={}\r\na=bundle-only\r\n{rest}",
                    fields.join(" ")
                ));
            }
        }
    }
    out
}

/// Item 6: video m-lines with port 0 and `a=bundle-only` were not counted
/// as sends, so a token without `publishVideo` published video, and twelve
/// such m-lines published 13 tracks (cap 8). Both are refused now and the
/// room hears of no track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_only_m_lines_do_not_bypass_permissions_or_the_track_cap() {
    use str0m::media::MediaKind;
    let server = spawn(&[]).await;
    let (mut watcher, _) = join(&server, "room", "bob").await;
    let audio_only = Permissions {
        publish_video: false,
        ..Permissions::ALL
    };
    let (mut mallory, _) = join_with(&server, "room", "mallory", audio_only).await;
    let video = bundle_only_offer(&[MediaKind::Audio, MediaKind::Video]);
    assert!(video.contains("m=video 0 ") && video.contains("a=bundle-only"));
    mallory
        .send(&ClientMessage::Publish { sdp: video })
        .await
        .unwrap();
    expect_error(&mut mallory, ErrorCode::PermissionDenied).await;

    let (mut eve, _) = join(&server, "room", "eve").await;
    let many = bundle_only_offer(&[MediaKind::Audio; 13]);
    eve.send(&ClientMessage::Publish { sdp: many })
        .await
        .unwrap();
    expect_error(&mut eve, ErrorCode::Capacity).await;

    // The watcher hears of nobody's track. The engine answers its commands
    // in order on one outbox, so an error for a bogus subscribe arrives
    // after anything the offers above made it send.
    let bogus = ClientMessage::Subscribe {
        track_ids: vec!["no-such-track".into()],
    };
    watcher.send(&bogus).await.unwrap();
    let published = recv_until(&mut watcher, |m| match m {
        ServerMessage::TrackPublished { .. } => Some(true),
        ServerMessage::Error { .. } => Some(false),
        _ => None,
    })
    .await;
    assert!(!published, "a refused offer published a track");
}

/// Item 7: a member that stops reading grew the server's memory by every
/// event meant for it, forever. Now its outbox is bounded: it is cut off
/// with `slow_consumer` (or when a write stalls), counted, and the room
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_disconnected() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = spawn(&[]).await;
    let (mut bob, _) = join(&server, "room", "bob").await;
    // Mallory's socket takes little before TCP pushes back on the server.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.http).await.unwrap();
    let url = format!("ws://{}/v1/rtc", server.http);
    let (mut mallory, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let join = ClientMessage::Join {
        protocol_version: signaling::PROTOCOL_VERSION,
        token: tokens().mint(&grant("room", "mallory")),
        auto_subscribe: true,
        resume_participant_id: None,
    };
    let text = signaling::encode(&join);
    mallory.send(Message::text(text)).await.unwrap();
    let pid = server.child.id();
    let before = rss_kib(pid);
    // Each bogus subscribe is answered with an error that names the 30 KB
    // id: the server has plenty to queue for a client that reads nothing.
    let bogus = signaling::encode(&ClientMessage::Subscribe {
        track_ids: vec!["x".repeat(30_000)],
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut cut_off = false;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, mallory.send(Message::text(bogus.clone()))).await {
            Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Err(_) => break,
        }
        let text = metrics(&server).await;
        if metric(&text, "switchboard_signaling_slow_consumers_total") >= 1.0 {
            cut_off = true;
            break;
        }
    }
    assert!(
        cut_off,
        "the server kept queueing for a client that does not read"
    );
    let grew = rss_kib(pid).saturating_sub(before);
    assert!(grew < 32 * 1024, "RSS grew {grew} KiB");
    assert_healthy(&server, Duration::from_secs(2)).await;
    // The room is unaffected: bob still gets answers from the engine.
    bob.send(&ClientMessage::Subscribe {
        track_ids: vec!["nope".into()],
    })
    .await
    .unwrap();
    expect_error(&mut bob, ErrorCode::UnknownTrack).await;
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(
    from: &str,
    server: &ServerProcess,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(server.http).await
}

/// Whether the server has closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Item 8: with the common soft limit of 1,024 descriptors, 500 slowloris
/// connections stayed open forever and 1,100 idle ones starved `/healthz`
/// and the API ("Too many open files"). Now headers must come within 10 s,
/// connections are capped to fit the descriptor limit (and per client IP),
/// and other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_floods_do_not_starve_the_api() {
    use tokio::io::AsyncWriteExt;
    let server = common::live::spawn_switchboard_under(
        &["prlimit", "--nofile=1024:1024", "--"],
        &scratch_dir(),
        free_port(),
        free_port(),
        &[("SWITCHBOARD_MAX_HTTP_CONNECTIONS_PER_IP", "300")],
    )
    .await;
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "switchboard_open_files_limit"),
        1024.0,
        "{text}"
    );
    // This test process holds 1,600 sockets itself.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 2048,
        "the test needs 2,048 descriptors; the hard limit is {hard}"
    );
    let mut slow = Vec::new();
    for _ in 0..500 {
        if let Ok(mut s) = connect_from("127.0.0.2", &server).await {
            // Headers that never end.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(s);
        }
    }
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        if let Ok(s) = connect_from("127.0.0.3", &server).await {
            idle.push(s);
        }
    }
    // Everyone else is served meanwhile.
    for _ in 0..5 {
        assert_healthy(&server, Duration::from_secs(2)).await;
    }
    let (status, body) = create_call(&server, "alice", &["bob".into()]).await;
    assert_eq!(status, 201, "{body}");
    // 300 from each attacking address were let in; the rest refused.
    assert_eq!((slow.len(), idle.len()), (500, 1_100));
    let series = "switchboard_http_connections_refused_total{cap=\"per_ip\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = metrics(&server).await;
    while metric(&text, series) < 1_000.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = metrics(&server).await;
    }
    assert_eq!(metric(&text, series), 1_000.0, "{text}");
    // The slowloris connections are cut at the header timeout (10 s).
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(20)).await,
            "a slowloris connection stayed open"
        );
    }
    assert_healthy(&server, Duration::from_secs(2)).await;
    drop(idle);
}

async fn devices_of(server: &ServerProcess, auth: &str) -> String {
    let headers = [("Authorization", auth)];
    request(server.http, "GET", "/v1/devices", &headers, "")
        .await
        .1
}

async fn register(
    server: &ServerProcess,
    auth: &[(&str, &str)],
    device: &str,
    token: &str,
) -> (u16, String) {
    let body = serde_json::json!({
        "deviceId": device,
        "platform": "ios",
        "push": {"apnsVoip": token},
        "apnsEnvironment": "production",
        "bundleId": "com.example.app",
    });
    request(server.http, "POST", "/v1/devices", auth, &body.to_string()).await
}

/// Item 10: registering another user's VoIP token from another device moved
/// it, so the victim's phone rang for the attacker's calls. A push token
/// belongs to an app install: it moves with the same `deviceId` (account
/// switching) or by the app backend's API key, and is refused otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_push_token_cannot_be_taken() {
    use base64::Engine;
    let server = spawn(&[]).await;
    let token = "a".repeat(64);
    let alice = format!("Bearer {}", common::live::user_token("alice"));
    let mallory = format!("Bearer {}", common::live::user_token("mallory"));
    let (status, body) =
        register(&server, &[("Authorization", &alice)], "alice-phone", &token).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = register(
        &server,
        &[("Authorization", &mallory)],
        "mallory-phone",
        &token,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("push_token_in_use"), "{body}");
    let devices = devices_of(&server, &alice).await;
    assert!(devices.contains(&token), "alice keeps her token: {devices}");
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "switchboard_push_token_conflicts_total"), 1.0);

    // Account switching on alice's phone: the same install, another user.
    let (status, body) = register(
        &server,
        &[("Authorization", &mallory)],
        "alice-phone",
        &token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let devices = devices_of(&server, &alice).await;
    assert!(
        !devices.contains(&token),
        "the token moved with the install: {devices}"
    );

    // The app backend may move it anywhere.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        common::live::API_KEY_ID,
        common::live::API_KEY_SECRET
    ));
    let backend = [
        ("Authorization", format!("Basic {basic}")),
        ("X-Switchboard-User", "alice".to_string()),
    ];
    let backend: Vec<(&str, &str)> = backend.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = register(&server, &backend, "alice-new-phone", &token).await;
    assert_eq!(status, 200, "{body}");
}

async fn create_with_key(server: &ServerProcess, key: &str, callees: &[&str]) -> (u16, String) {
    let auth = format!("Bearer {}", common::live::user_token("alice"));
    let body = serde_json::json!({
        "calleeUserIds": callees, "type": "audio", "deviceId": "alice-phone",
    });
    let headers = [("Authorization", auth.as_str()), ("Idempotency-Key", key)];
    request(
        server.http,
        "POST",
        "/v1/calls",
        &headers,
        &body.to_string(),
    )
    .await
}

fn call_id_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["call"]["callId"].as_str().unwrap().to_string()
}

/// Item 11: a request that failed left its Idempotency-Key "in progress"
/// (409) for 24 hours, across restarts. Now failures the client can fix
/// (400, 429, 5xx) release the key, successes are replayed, and the
/// reservation of a request that died lapses within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_does_not_hold_its_idempotency_key() {
    let data_dir = scratch_dir();
    let server = spawn_switchboard(&data_dir, free_port(), free_port(), &[]).await;
    // Refused, then corrected and retried with the same key, as an SDK does.
    let (status, body) = create_with_key(&server, "k1", &["bob", "bob"]).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = create_with_key(&server, "k1", &["bob"]).await;
    assert_eq!(status, 201, "{body}");
    let first = call_id_of(&body);
    let (status, body) = create_with_key(&server, "k1", &["bob"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(call_id_of(&body), first, "a retry is the same call");

    // A reservation left by a request that died (written as the server
    // writes it, about to lapse): 409 while it binds, then the key is free.
    let db = rusqlite::Connection::open(data_dir.join("control.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The first request with k2 succeeds, so the key holds this request's
    // hash; then its record is turned into a dead request's reservation.
    let (status, _) = create_with_key(&server, "k2", &["carol"]).await;
    assert_eq!(status, 201);
    db.execute(
        "UPDATE idempotency SET status = 0, body = 'a-call-that-never-was', expires_at = ?1
         WHERE user_id = 'alice' AND key = 'k2'",
        rusqlite::params![now_ms + 1_500],
    )
    .unwrap();
    let (status, body) = create_with_key(&server, "k2", &["carol"]).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("in_progress"), "{body}");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let (status, body) = create_with_key(&server, "k2", &["carol"]).await;
    assert_eq!(status, 201, "{body}");
}

/// A user token as `mint_user_token` writes it, with the times given.
fn user_token_with(user: &str, iat: u64, exp: u64) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(common::live::API_KEY_ID.into());
    let claims = serde_json::json!({
        "sub": user, "aud": "switchboard:user", "iat": iat, "exp": exp,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(common::live::API_KEY_SECRET.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

type EventsSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/events` and authenticates as `device` with `token`.
async fn events(server: &ServerProcess, token: &str, device: &str) -> EventsSocket {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{}/v1/events", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = serde_json::json!({"type": "auth", "token": token, "deviceId": device});
    ws.send(Message::text(auth.to_string())).await.unwrap();
    assert_eq!(
        next_event(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "authenticated"
    );
    ws
}

/// The next JSON message within `limit`; `None` if the socket closed.
async fn next_event(ws: &mut EventsSocket, limit: Duration) -> Option<serde_json::Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("an event in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).ok(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Item 12: a user token "issued" ten years ahead with a one-hour life was
/// accepted (its life was measured from `iat`), call tokens living ten years
/// were accepted, and an events socket outlived its token. Now lifetimes
/// count from now, `nbf` and `iat` are checked, and events sockets close at
/// expiry unless refreshed in-band; signaling sessions outlive their call
/// token (it authorises the join only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifetimes_are_enforced() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = spawn(&[]).await;
    let now = unix_now();
    let ahead = now + 10 * 365 * 24 * 3600;
    let devices = |token: String| async move {
        let auth = format!("Bearer {token}");
        request(
            server.http,
            "GET",
            "/v1/devices",
            &[("Authorization", &auth)],
            "",
        )
        .await
    };
    let (status, body) = devices(user_token_with("alice", ahead, ahead + 3600)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = devices(user_token_with("alice", now, now + 600)).await;
    assert_eq!(status, 200, "{body}");

    // A call token for ten years, signed with the server's secret.
    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
    let long = CallTokens::new(
        PROCESS_CALL_TOKEN_SECRET.as_bytes(),
        "switchboard",
        ten_years,
    );
    let url = format!("ws://{}/v1/rtc", server.http);
    let mut ws = SignalingClient::connect(&url).await.unwrap();
    let join = |token: String| ClientMessage::Join {
        protocol_version: signaling::PROTOCOL_VERSION,
        token,
        auto_subscribe: true,
        resume_participant_id: None,
    };
    ws.send(&join(long.mint(&grant("room", "alice"))))
        .await
        .unwrap();
    expect_error(&mut ws, ErrorCode::InvalidToken).await;
    // A call token that expires in 3 s: the session outlives it.
    let short = CallTokens::new(
        PROCESS_CALL_TOKEN_SECRET.as_bytes(),
        "switchboard",
        Duration::from_secs(3),
    );
    let (mut session, _) = {
        ws.send(&join(short.mint(&grant("room", "bob"))))
            .await
            .unwrap();
        let offer = recv_until(&mut ws, |m| match m {
            ServerMessage::SubscriberOffer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .await;
        (ws, offer)
    };

    // Events sockets: one with a token living 3 s, one refreshed in time.
    let alice = format!("Bearer {}", user_token_with("alice", now, now + 600));
    let body = serde_json::json!({"deviceId": "alice-web", "platform": "web"}).to_string();
    let (status, text) = request(
        server.http,
        "POST",
        "/v1/devices",
        &[("Authorization", &alice)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let soon = unix_now() + 3;
    let mut expiring = events(
        &server,
        &user_token_with("alice", soon - 3, soon),
        "alice-web",
    )
    .await;
    let mut refreshed = events(
        &server,
        &user_token_with("alice", soon - 3, soon),
        "alice-web",
    )
    .await;
    let fresh = user_token_with("alice", unix_now(), unix_now() + 600);
    let refresh = serde_json::json!({"type": "refresh", "token": fresh});
    refreshed
        .send(Message::text(refresh.to_string()))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut refreshed, Duration::from_secs(5))
            .await
            .unwrap()["type"],
        "refreshed"
    );
    let expired = next_event(&mut expiring, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(expired["code"], "token_expired", "{expired}");
    assert!(
        next_event(&mut expiring, Duration::from_secs(5))
            .await
            .is_none(),
        "closed"
    );

    // Past both short expiries: the refreshed socket and the session live.
    tokio::time::sleep(Duration::from_secs(1)).await;
    session
        .send(&ClientMessage::Ping { timestamp: 9 })
        .await
        .unwrap();
    recv_until(&mut session, |m| {
        matches!(m, ServerMessage::Pong { .. }).then_some(())
    })
    .await;
    refreshed
        .send(Message::Ping(Default::default()))
        .await
        .unwrap();
    let still_open = tokio::time::timeout(
        Duration::from_millis(500),
        next_event(&mut refreshed, Duration::from_secs(2)),
    )
    .await;
    assert!(
        !matches!(still_open, Ok(None)),
        "the refreshed socket closed"
    );
}

/// Item 13: development mode signed `/dev/user-token` tokens with the real
/// API key, so anyone could get a `/v1` token for any user that production
/// nodes accept. It now refuses to start with real credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_refuses_real_credentials() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env(
            "SWITCHBOARD_HTTP_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "SWITCHBOARD_RTC_UDP_BIND",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("SWITCHBOARD_TURN_ENABLED", "false")
        .env("SWITCHBOARD_DATA_DIR", scratch_dir())
        .env("SWITCHBOARD_DEV_TOKEN_ENDPOINT", "true")
        .env(
            "SWITCHBOARD_API_KEY",
            format!(
                "{}:{}",
                common::live::API_KEY_ID,
                common::live::API_KEY_SECRET
            ),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = ServerProcess {
        child,
        http: "127.0.0.1:9".parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "it should refuse to start at once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = server.child.wait().unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    use std::io::Read;
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("development mode"), "{stderr}");
}

/// Item 14: the store was created 0644 in a 0755 directory (push tokens
/// readable by local users), `/metrics` could only share the public API
/// port, and an unauthenticated TURN Allocate is answered at about 4x its
/// size, without limit per source. Now: 0600 / 0700, a metrics listener of
/// its own, and at most 20 unauthenticated answers per source per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hygiene_store_permissions_metrics_listener_and_turn_reflection() {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = scratch_dir().join("nested");
    let metrics_port = free_port();
    let turn_port = free_port();
    let server = spawn_switchboard(
        &data_dir,
        free_port(),
        free_port(),
        &[
            (
                "SWITCHBOARD_METRICS_LISTEN",
                &format!("127.0.0.1:{metrics_port}"),
            ),
            (
                "SWITCHBOARD_TURN_UDP_LISTEN",
                &format!("127.0.0.1:{turn_port}"),
            ),
        ],
    )
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("control.db")), 0o600);

    let ops: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let (status, text) = request(ops, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(text.contains("switchboard_engine_panics_total"), "{text}");
    let (status, _) = request(server.http, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 404, "metrics are not on the public port");
    let (status, _) = request(server.http, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);

    // 200 unauthenticated Allocates from one source in well under a second.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = format!("127.0.0.1:{turn_port}");
    for n in 0..200 {
        udp.send_to(&turn_allocate(n), &target).await.unwrap();
    }
    let mut answers = 0;
    let mut buf = [0u8; 1500];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), udp.recv_from(&mut buf)).await
    {
        answers += 1;
    }
    assert!(
        (1..=40).contains(&answers),
        "{answers} answers to 200 requests"
    );
}

/// Item 9: trickled candidates pointed the server's ICE checks at any
/// address and port (549 STUN requests to 100 ports, and to 0.0.0.0). Now
/// unspecified, multicast and broadcast candidates are dropped, each
/// connection takes at most 128 distinct ones (`invalid_candidate` after),
/// and private ones can be denied by configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_candidates_are_bounded_and_filtered() {
    let server = spawn(&[]).await;
    let (mut ws, server_offer) = join(&server, "room", "mallory").await;
    let (offer, _) = client_sdp(&server_offer);
    ws.send(&ClientMessage::Publish { sdp: offer })
        .await
        .unwrap();
    recv_until(&mut ws, |m| {
        matches!(m, ServerMessage::PublishAnswer { .. }).then_some(())
    })
    .await;
    // 140 listening ports the server would probe if told to.
    let mut targets = Vec::new();
    for _ in 0..140 {
        targets.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let trickle = |addr: &str, port: u16| ClientMessage::Trickle {
        target: PeerTarget::Publisher,
        candidate: signaling::IceCandidate {
            candidate: format!("candidate:1 1 udp 2130706431 {addr} {port} typ host"),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        },
    };
    ws.send(&trickle("0.0.0.0", 9)).await.unwrap();
    ws.send(&trickle("255.255.255.255", 9)).await.unwrap();
    let mut refused = 0;
    for t in &targets {
        let port = t.local_addr().unwrap().port();
        ws.send(&trickle("127.0.0.1", port)).await.unwrap();
        // Stay under the signaling rate limit (50/s).
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Errors for those past the limit (the client's offer carried one).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), ws.recv()).await {
            Ok(Ok(ServerMessage::Error {
                code: ErrorCode::InvalidCandidate,
                ..
            })) => refused += 1,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    assert_eq!(
        refused,
        140 - 127,
        "one of 128 went to the offer's own candidate"
    );
    // Let the checks run, then see who was probed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut probed = 0;
    let mut buf = [0u8; 1500];
    for t in &targets {
        if t.try_recv_from(&mut buf).is_ok() {
            probed += 1;
        }
    }
    assert!(probed <= 127, "{probed} ports were probed");
    assert!(probed > 0, "the accepted candidates are checked");
    assert_healthy(&server, Duration::from_secs(2)).await;
}

/// ICE over TCP: a connection whose first frame is not STUN naming one of
/// our ufrags (garbage, an unknown ufrag, a frame over the datagram size)
/// is closed at once and counted; the node stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_connections_without_our_stun_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listen = format!("127.0.0.1:{}", free_port());
    let server = spawn(&[("SWITCHBOARD_RTC_TCP_BIND", &listen)]).await;
    let framed = |payload: &[u8]| -> Vec<u8> {
        let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    };
    let first_frames = [
        framed(b"not a STUN message at all"),
        framed(&stun_binding_request("nobody:knows")),
        // Announces 60,000 bytes: more than any datagram accepted.
        60_000u16.to_be_bytes().to_vec(),
    ];
    for first in &first_frames {
        let mut stream = tokio::net::TcpStream::connect(&listen).await.unwrap();
        stream.write_all(first).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the connection stayed open: {read:?}"
        );
    }
    assert_healthy(&server, Duration::from_secs(2)).await;
    // The gauge drops just after the socket closes: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = metrics(&server).await;
    while metric(&text, "switchboard_ice_tcp_connections ") > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics(&server).await;
    }
    assert_eq!(
        metric(&text, "switchboard_ice_tcp_connections "),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_ice_tcp_refused_total{reason=\"no_stun\"}"
        ),
        3.0,
        "{text}"
    );
}
