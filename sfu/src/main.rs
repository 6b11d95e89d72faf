//! `switchboard`: the whole server in one process, on embedded defaults
//! unless a config file (`--config path.toml`) or `SWITCHBOARD_*` variables
//! say otherwise.

use sfu::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let config_path = match args.as_slice() {
        [_] => None,
        [_, flag, path] if flag == "--config" => Some(path.as_str()),
        _ => {
            eprintln!("usage: switchboard [--config path.toml]");
            return std::process::ExitCode::from(2);
        }
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = match sfu::telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return std::process::ExitCode::from(2);
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
            return std::process::ExitCode::from(1);
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
            return std::process::ExitCode::from(1);
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
            std::process::ExitCode::SUCCESS
        }
        second = signals.next() => {
            tracing::warn!(signal = second, "second signal: exiting without finishing the drain");
            std::process::ExitCode::from(130)
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
