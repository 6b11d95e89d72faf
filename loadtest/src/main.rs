//! `switchboard-loadtest`: see `loadtest/README.md`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use loadtest::scenario::room::{RoomPlan, RoomServer, run, search};

#[derive(Parser)]
#[command(
    name = "switchboard-loadtest",
    about = "Load bots for a switchboard server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Write the report as JSON here too.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Pin this tool (the bots) to this CPU.
    #[arg(long, global = true)]
    cpu: Option<usize>,
    /// Pin the server (`--server-pid`; for `baseline` its relay) to this
    /// CPU, every thread.
    #[arg(long, global = true)]
    server_cpu: Option<usize>,
}

/// Rooms and media, the same for the SFU and the baseline.
#[derive(clap::Args)]
struct RoomShape {
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    #[arg(long, default_value_t = 500)]
    video_kbps: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// Publishers send three simulcast layers; subscribers ask for low,
    /// medium and high in turn (the SFU only: the baseline relay has no
    /// layers to choose from).
    #[arg(long)]
    simulcast: bool,
}

/// How a room run starts and is judged, the same for both servers.
#[derive(clap::Args)]
struct RoomRun {
    #[arg(long, default_value_t = 2.0)]
    ramp_up_seconds: f64,
    /// The server's PID (switchboard's or Janus's), for its CPU time and
    /// memory (`/proc`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Fail (exit 1) above this loss.
    #[arg(long, default_value_t = 1.0)]
    max_loss_percent: f64,
}

/// The server the bots join, and how their call tokens are minted.
#[derive(clap::Args)]
struct SignalingTarget {
    /// The server's signaling URL (the only address targeted).
    #[arg(long, default_value = "ws://127.0.0.1:7880/v1/rtc")]
    url: String,
    /// The server's `call_token_secret` (tokens are minted with it).
    #[arg(long, env = "SWITCHBOARD_CALL_TOKEN_SECRET")]
    secret: String,
    #[arg(long, default_value = "switchboard")]
    issuer: String,
}

#[derive(Subcommand)]
enum Command {
    /// Rooms of publishers and subscribers.
    Room {
        #[command(flatten)]
        target: SignalingTarget,
        #[command(flatten)]
        shape: RoomShape,
        #[command(flatten)]
        run: RoomRun,
        /// Publishers drop every n-th datagram they send (induced loss).
        #[arg(long)]
        drop_every: Option<u64>,
        /// Capacity search: raise subscribers (x1.5) until loss > 0.5% or
        /// latency p99 > 50 ms, up to this many; report the highest passing.
        #[arg(long)]
        search_up_to: Option<usize>,
    },
    /// The `room` pattern through Janus's videoroom plugin (WebSocket API),
    /// with the same bots: the comparison `bench/capacity.sh` runs.
    Janus {
        /// Janus's WebSocket API.
        #[arg(long, default_value = "ws://127.0.0.1:8188")]
        url: String,
        #[command(flatten)]
        shape: RoomShape,
        #[command(flatten)]
        run: RoomRun,
    },
    /// Participants joining at a steady rate, publishing, leaving.
    Churn {
        #[command(flatten)]
        target: SignalingTarget,
        #[arg(long, default_value_t = 4)]
        rooms: usize,
        #[arg(long, default_value_t = 2.0)]
        joins_per_second: f64,
        #[arg(long, default_value_t = 5.0)]
        stay_seconds: f64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long, default_value_t = 500)]
        video_kbps: u32,
        #[arg(long, default_value = "127.0.0.1")]
        local_ip: IpAddr,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Runs the scenario a TOML file describes: `scenario = "room"` and the
    /// subcommand's flags as keys (`rooms = 10`, `video-kbps = 800`).
    File { path: PathBuf },
    /// Devices' events sockets, authenticated then idle: the server memory
    /// each costs. Raise the descriptor limits of both processes first.
    Idle {
        /// The server's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:7880")]
        url: String,
        /// An API key of the server, `id:secret`.
        #[arg(long, env = "SWITCHBOARD_API_KEY")]
        api_key: String,
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Loopback source addresses used in turn: 127.0.0.1 .. 127.0.0.N.
        #[arg(long, default_value_t = 1)]
        sources: u8,
        #[arg(long, default_value_t = 0.0)]
        hold_seconds: f64,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Concurrent 1:1 call lifecycles over the call API; exits 1 if any call
    /// ends with a reason its role does not expect.
    Calls {
        /// The server's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:7880")]
        url: String,
        /// An API key of the server, `id:secret` (user tokens are minted with it).
        #[arg(long, env = "SWITCHBOARD_API_KEY")]
        api_key: String,
        #[arg(long, default_value_t = 10)]
        calls: usize,
        #[arg(long, default_value_t = 0.2)]
        decline_share: f64,
        #[arg(long, default_value_t = 0.1)]
        timeout_share: f64,
        #[arg(long, default_value_t = 0.2)]
        race_share: f64,
        #[arg(long, default_value_t = 3.0)]
        media_seconds: f64,
        /// The server's `ring_timeout_seconds`.
        #[arg(long, default_value_t = 40.0)]
        ring_timeout_seconds: f64,
        #[arg(long, default_value = "127.0.0.1")]
        local_ip: IpAddr,
        /// Each callee also has a phone rung by push (iPhone or Android, in
        /// turn, never answering): point the server at APNs/FCM or the
        /// stand-ins (`cargo run -p control --example push_standins`).
        #[arg(long)]
        phones: bool,
        /// Expect a wrong reason for one call (checks that failures fail).
        #[arg(long)]
        inject_unexpected: bool,
    },
    /// The same room pattern through a bare UDP fan-out relay (started as a
    /// child process, so its CPU time is its own).
    Baseline {
        #[command(flatten)]
        shape: RoomShape,
        /// Where the relay listens (default: `--local-ip`), e.g. the
        /// server's end of a veth pair.
        #[arg(long)]
        relay_ip: Option<IpAddr>,
        /// Start the relay in the network namespace of this process (the
        /// server's, `loadtest/bench/veth.sh`), by `nsenter`, which runs it
        /// as the same process: its CPU time is still read by its PID.
        #[arg(long)]
        relay_netns_pid: Option<u32>,
    },
    /// The baseline's relay itself (what `baseline` starts).
    #[command(hide = true)]
    BaselineRelay {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: std::net::SocketAddr,
    },
}

/// The command a scenario file describes, as if its keys were flags.
fn from_file(path: &std::path::Path, json: Option<&PathBuf>) -> Result<Cli, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut args = loadtest::scenario_file::args(&text)?;
    args.insert(0, "switchboard-loadtest".into());
    if let Some(json) = json {
        args.extend(["--json".to_string(), json.display().to_string()]);
    }
    Cli::try_parse_from(args).map_err(|e| e.to_string())
}

fn room_plan(
    server: RoomServer,
    shape: &RoomShape,
    run: &RoomRun,
    drop_every: Option<u64>,
) -> RoomPlan {
    RoomPlan {
        server,
        rooms: shape.rooms,
        publishers: shape.publishers,
        subscribers: shape.subscribers,
        video_kbps: shape.video_kbps,
        ramp_up: Duration::from_secs_f64(run.ramp_up_seconds),
        duration: Duration::from_secs_f64(shape.seconds),
        local_ip: shape.local_ip,
        server_pid: run.server_pid,
        drop_every,
        run_tag: format!("{}", std::process::id()),
        progress: Some(Arc::default()),
        simulcast: shape.simulcast,
    }
}

/// Runs the rooms once (ok: every bot joined, loss at most `max_loss_percent`)
/// or, with `search_up_to`, the capacity search (ok: some level passed).
async fn run_rooms(
    plan: &RoomPlan,
    search_up_to: Option<usize>,
    max_loss_percent: f64,
) -> (loadtest::report::Report, bool) {
    let shown = plan.progress.clone().map(|p| {
        let bots = plan.rooms * (plan.publishers + plan.subscribers);
        loadtest::progress::show(p, bots)
    });
    let result = if let Some(max) = search_up_to {
        let steps = search(plan, max).await;
        for (r, pass) in &steps {
            println!(
                "{} bots, {} video tracks: {}",
                r.bots_planned,
                r.subscribed_video_tracks,
                if *pass { "pass" } else { "FAIL" }
            );
        }
        let best = steps
            .iter()
            .rev()
            .find(|(_, pass)| *pass)
            .map(|(r, _)| r.clone());
        let ok = best.is_some();
        let report = best.unwrap_or_else(|| steps[0].0.clone());
        println!("highest passing level:");
        (report, ok)
    } else {
        let report = run(plan).await;
        let planned = plan.video_tracks_planned();
        if report.subscribed_video_tracks < planned {
            eprintln!(
                "media arrived on {} of {planned} planned video tracks",
                report.subscribed_video_tracks
            );
        }
        let ok = plan.delivered(&report, max_loss_percent);
        (report, ok)
    };
    if let Some(shown) = shown {
        shown.abort();
    }
    result
}

/// Starts `baseline-relay` as a child process; returns it and its address.
fn spawn_relay(
    ip: IpAddr,
    netns_pid: Option<u32>,
) -> Option<(std::process::Child, std::net::SocketAddr)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().ok()?;
    let relay_args = [
        "baseline-relay".to_string(),
        "--bind".to_string(),
        std::net::SocketAddr::new(ip, 0).to_string(),
    ];
    let mut command = match netns_pid {
        Some(pid) => {
            let mut nsenter = std::process::Command::new("nsenter");
            nsenter.args(["-t", &pid.to_string(), "-n"]).arg(&exe);
            nsenter
        }
        None => std::process::Command::new(&exe),
    };
    let mut child = command
        .args(relay_args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    Some((child, line.trim().parse().ok()?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::File { path } = &cli.command {
        match from_file(path, cli.json.as_ref()) {
            Ok(from_file) => cli = from_file,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(cpu) = cli.cpu
        && let Err(e) = loadtest::pinning::pin_process(0, cpu)
    {
        eprintln!("--cpu {cpu}: {e}");
        return ExitCode::FAILURE;
    }
    let server_pid = match &cli.command {
        Command::Room { run, .. } | Command::Janus { run, .. } => run.server_pid,
        Command::Churn { server_pid, .. } => *server_pid,
        _ => None,
    };
    let server_cpu = cli.server_cpu;
    if let Some(cpu) = server_cpu
        && !matches!(cli.command, Command::Baseline { .. })
    {
        let pinned = server_pid
            .ok_or_else(|| "needs --server-pid".to_string())
            .and_then(|pid| loadtest::pinning::pin_process(pid, cpu));
        if let Err(e) = pinned {
            eprintln!("--server-cpu {cpu}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (report, ok) = match cli.command {
        Command::Room {
            target:
                SignalingTarget {
                    url,
                    secret,
                    issuer,
                },
            shape,
            run,
            drop_every,
            search_up_to,
        } => {
            let server = RoomServer::Switchboard {
                url,
                token_secret: secret,
                token_issuer: issuer,
            };
            let plan = room_plan(server, &shape, &run, drop_every);
            run_rooms(&plan, search_up_to, run.max_loss_percent).await
        }
        Command::Janus { url, shape, run } => {
            if shape.simulcast {
                // The driver asks Janus for no layers (`updateSubscription` is dropped).
                eprintln!("janus: --simulcast is not driven");
                return ExitCode::FAILURE;
            }
            let server = RoomServer::Janus { url };
            let plan = room_plan(server, &shape, &run, None);
            run_rooms(&plan, None, run.max_loss_percent).await
        }
        Command::Churn {
            target:
                SignalingTarget {
                    url,
                    secret,
                    issuer,
                },
            rooms,
            joins_per_second,
            stay_seconds,
            seconds,
            video_kbps,
            local_ip,
            server_pid,
        } => {
            let plan = loadtest::scenario::churn::ChurnPlan {
                url,
                token_secret: secret,
                token_issuer: issuer,
                rooms,
                joins_per_second,
                stay: Duration::from_secs_f64(stay_seconds),
                duration: Duration::from_secs_f64(seconds),
                video_kbps,
                local_ip,
                server_pid,
                run_tag: std::process::id().to_string(),
                progress: Some(Arc::default()),
            };
            let expected = (joins_per_second * seconds).ceil() as usize;
            let shown = plan
                .progress
                .clone()
                .map(|p| loadtest::progress::show(p, expected));
            let report = loadtest::scenario::churn::run(&plan).await;
            if let Some(shown) = shown {
                shown.abort();
            }
            let ok = report.bots_joined == report.bots_planned;
            (report, ok)
        }
        Command::Baseline {
            shape,
            relay_ip,
            relay_netns_pid,
        } => {
            let relay_ip = relay_ip.unwrap_or(shape.local_ip);
            let Some((mut relay, addr)) = spawn_relay(relay_ip, relay_netns_pid) else {
                eprintln!("the baseline relay did not start");
                return ExitCode::FAILURE;
            };
            // The relay stands where the server would: on the server's CPU.
            if let Some(cpu) = server_cpu
                && let Err(e) = loadtest::pinning::pin_process(relay.id(), cpu)
            {
                eprintln!("--server-cpu {cpu}: {e}");
                let _ = relay.kill();
                return ExitCode::FAILURE;
            }
            let plan = loadtest::baseline::BaselinePlan {
                relay: addr,
                relay_pid: Some(relay.id()),
                rooms: shape.rooms,
                publishers: shape.publishers,
                subscribers: shape.subscribers,
                video_kbps: shape.video_kbps,
                duration: Duration::from_secs_f64(shape.seconds),
                local_ip: shape.local_ip,
            };
            let report = loadtest::baseline::run(&plan).await;
            let _ = relay.kill();
            let _ = relay.wait();
            let ok = report.bots_joined == report.bots_planned;
            (report, ok)
        }
        Command::Calls {
            url,
            api_key,
            calls,
            decline_share,
            timeout_share,
            race_share,
            media_seconds,
            ring_timeout_seconds,
            local_ip,
            phones,
            inject_unexpected,
        } => {
            let Some((key_id, key_secret)) = api_key.split_once(':') else {
                eprintln!("--api-key is id:secret");
                return ExitCode::FAILURE;
            };
            let plan = loadtest::scenario::calls::CallsPlan {
                base_url: url,
                api_key_id: key_id.into(),
                api_key_secret: key_secret.into(),
                calls,
                decline_share,
                timeout_share,
                race_share,
                media: Duration::from_secs_f64(media_seconds),
                ring_timeout: Duration::from_secs_f64(ring_timeout_seconds),
                local_ip,
                phones,
                run_tag: std::process::id().to_string(),
                inject_unexpected,
            };
            let report = loadtest::scenario::calls::run(&plan).await;
            print!("{}", report.table());
            if let Some(path) = &cli.json {
                let _ =
                    std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default());
            }
            return if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Idle {
            url,
            api_key,
            sockets,
            sources,
            hold_seconds,
            concurrency,
            server_pid,
        } => {
            let Some((key_id, key_secret)) = api_key.split_once(':') else {
                eprintln!("--api-key is id:secret");
                return ExitCode::FAILURE;
            };
            let plan = loadtest::scenario::idle::IdlePlan {
                base_url: url,
                api_key_id: key_id.into(),
                api_key_secret: key_secret.into(),
                sockets,
                sources: (1..=sources.max(1))
                    .map(|n| IpAddr::from([127, 0, 0, n]))
                    .collect(),
                hold: Duration::from_secs_f64(hold_seconds),
                concurrency,
                server_pid,
                run_tag: std::process::id().to_string(),
            };
            let report = loadtest::scenario::idle::run(&plan).await;
            print!("{}", report.table());
            if let Some(path) = &cli.json {
                let _ =
                    std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default());
            }
            return if report.sockets_open == report.sockets_planned {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::File { .. } => return ExitCode::FAILURE, // replaced above
        Command::BaselineRelay { bind } => {
            let socket = match loadtest::baseline::bind_relay(bind) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot bind {bind}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The parent reads the port from this line.
            match socket.local_addr() {
                Ok(addr) => println!("{addr}"),
                Err(_) => return ExitCode::FAILURE,
            }
            let _ = loadtest::baseline::serve_relay(&socket);
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = cli.json
        && let Err(e) = std::fs::write(
            &path,
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
        )
    {
        eprintln!("cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
