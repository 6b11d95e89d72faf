//! `switchboard`: the whole server in one process, on embedded defaults
//! unless a config file (`--config path.toml`) or `SWITCHBOARD_*` variables
//! say otherwise. `switchboard doctor` checks a configuration and this
//! host; `switchboard push-test` pushes one device.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sfu::config::Config;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A calling server: ringing, SFU, TURN"
)]
struct Cli {
    /// A TOML config file; SWITCHBOARD_* variables override it.
    #[arg(long, global = true, value_name = "path.toml")]
    config: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the configuration and this host item by item (exit 1 if one fails).
    Doctor,
    /// Send one test push to a registered device and print the provider's answer.
    PushTest {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.config.as_deref();
    match cli.command {
        None => serve(config_path).await,
        Some(Command::Doctor) => {
            let checks = sfu::doctor::run(config_path).await;
            if sfu::doctor::print(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::PushTest { user, device }) => {
            let config = match Config::load(config_path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    return ExitCode::from(2);
                }
            };
            match sfu::push_test::run(&config, &user, &device).await {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("{why}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs the node until a signal (or the API) drains it.
async fn serve(config_path: Option<&str>) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match sfu::telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    if config.dev_token_endpoint {
        tracing::warn!(
            "POST /dev/token is enabled: anyone can mint call tokens. Development only."
        );
    }
    let running = match sfu::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(1);
        }
    };
    let announced: Vec<String> = running.announced.iter().map(|a| a.to_string()).collect();
    println!(
        "switchboard listening: signaling ws://{}/v1/rtc, metrics http://{}/metrics, media udp {} (announced {})",
        running.http_addr,
        running.http_addr,
        running.udp_addr,
        announced.join(", ")
    );
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: cannot listen for signals: {e}");
            return ExitCode::from(1);
        }
    };
    // SIGTERM / SIGINT, or an operator's `POST /v1/nodes/{id}/drain`.
    let lifecycle = running.state.lifecycle.clone();
    tokio::select! {
        first = signals.next() => {
            tracing::info!(signal = first, "draining (a second signal exits at once)");
        }
        () = lifecycle.drain_asked() => {
            tracing::info!("draining: asked through the API (a signal exits at once)");
        }
    }
    let deadline = running.state.config.drain_timeout();
    let exit = tokio::select! {
        end = running.drain(deadline) => {
            tracing::info!(?end, "drained; exiting");
            ExitCode::SUCCESS
        }
        second = signals.next() => {
            tracing::warn!(signal = second, "second signal: exiting without finishing the drain");
            ExitCode::from(130)
        }
    };
    // The last calls' spans; bounded by the exporter's timeout.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    exit
}

/// SIGTERM (what systemd, Kubernetes and Docker send) and SIGINT (Ctrl-C).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
