//! `switchboard`: the whole server in one process, on embedded defaults
//! unless a config file (`--config path.toml`) or `SWITCHBOARD_*` variables
//! say otherwise.

use sfu::config::Config;
use tracing_subscriber::EnvFilter;

/// `stun_proto` logs every expected 401 challenge at ERROR; the relay logs
/// what matters itself.
const DEFAULT_LOG_FILTER: &str = "info,str0m=warn,stun_proto=off,turn_server_proto=warn";

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
    init_logging(&config.log_format);
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
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}

fn init_logging(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
