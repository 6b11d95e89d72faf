//! Per-packet forwarding cost of the engine: one encrypted video packet from a
//! publisher in, SRTP-decrypted, rewritten and re-encrypted for each
//! subscriber, transmits out. Rooms of 2 (the 1:1 fast path) and 10 (one
//! publisher, nine subscribers), and 2 with the fast path off as the baseline
//! for the fast path.
//!
//! Run: `cargo bench -p sfu`. Compare the figures as ratios within one run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::sim::{SERVER, Sim, engine_config};
use criterion::{Criterion, criterion_group, criterion_main};
use sfu::engine::{Input, Output};

/// Fake time between packets: 100 packets/s of 1000 bytes stays well under
/// the subscribers' pacing rate, so the pacer never holds packets back.
const PACKET_INTERVAL: Duration = Duration::from_millis(10);
const PAYLOAD: usize = 1000;

fn room(size: usize, fast_path: bool) -> Sim {
    let mut config = engine_config();
    config.fast_path = fast_path;
    let mut sim = Sim::new(config);
    for i in 0..size {
        let b = sim.join(&format!("b{i}"), "bench");
        if i == 0 {
            sim.bots[b].publish();
            sim.deliver();
        }
    }
    sim.connect_all();
    sim.run_for(Duration::from_millis(500));
    sim
}

fn bench_room(c: &mut Criterion, name: &str, size: usize, fast_path: bool) {
    let mut sim = room(size, fast_path);
    let server = SERVER.parse().unwrap();
    let mut transmits = 0u64;
    let mut packets = 0u64;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                // Chunks of at most 1 s of fake time; between chunks (not
                // measured) the bots get what the engine sent and answer, so
                // ICE consent and RTCP stay alive as in a real call.
                let chunk = left.min(100);
                left -= chunk;
                let mut inputs = Vec::with_capacity(chunk as usize);
                for _ in 0..chunk {
                    sim.now += PACKET_INTERVAL;
                    let now = sim.now;
                    for t in sim.bots[0].video_datagrams(now, PAYLOAD) {
                        inputs.push((now, t));
                    }
                }
                let mut sent = Vec::new();
                let start = Instant::now();
                for (now, t) in &inputs {
                    sim.engine.handle_input(
                        Input::Datagram {
                            proto: str0m::net::Protocol::Udp,
                            source: t.source,
                            destination: server,
                            contents: &t.contents,
                        },
                        *now,
                    );
                    sim.engine.handle_input(Input::Timeout, *now);
                    loop {
                        match sim.engine.poll_output() {
                            Output::Timeout(_) => break,
                            Output::Transmit(t) => sent.push(t),
                            Output::Event(_) => {}
                        }
                    }
                }
                elapsed += start.elapsed();
                packets += inputs.len() as u64;
                transmits += sent.len() as u64;
                for t in &sent {
                    sim.deliver_to_bot(t);
                }
                let now = sim.now;
                for bot in &mut sim.bots {
                    bot.handle_timeout(now);
                }
                sim.deliver();
            }
            elapsed
        })
    });
    let forwarded = sim.engine.stats().rtp_forwarded;
    eprintln!(
        "{name}: {packets} packets in, {transmits} datagrams out, {forwarded} RTP forwarded in total ({:.2} per packet in)",
        transmits as f64 / packets.max(1) as f64
    );
    assert!(forwarded > 0, "{name} forwarded nothing");
}

fn forwarding(c: &mut Criterion) {
    bench_room(c, "forward_1to1_fast_path", 2, true);
    bench_room(c, "forward_1to1_fan_out", 2, false);
    bench_room(c, "forward_room_of_10", 10, true);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = forwarding
}
criterion_main!(benches);
