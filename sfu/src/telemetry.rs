//! What the process says about itself besides `/metrics`: logs (text or
//! JSON, `RUST_LOG` filtered) and, with `otlp_endpoint`, one
//! OpenTelemetry trace per call (`control::call_trace`) exported over
//! OTLP/HTTP.

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;

/// `stun_proto` logs every expected 401 challenge at ERROR; the relay logs
/// what matters itself.
pub const DEFAULT_LOG_FILTER: &str = "info,str0m=warn,stun_proto=off,turn_server_proto=warn";

/// How long one export may take before the batch is dropped (the exporter
/// runs on its own thread: a dead collector never slows a call).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// The installed logging and tracing; [`Telemetry::shutdown`] sends the
/// spans still buffered.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (bounded by the
    /// export timeout). Call once, before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "traces: the last spans were not exported");
        }
    }
}

/// Installs the process's logger (and tracer, with `otlp_endpoint`).
/// Call once, from within the tokio runtime.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = if config.log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let (traces, provider) = match &config.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let provider = tracer_provider(config, endpoint)?;
            let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "switchboard");
            control::call_trace::install(tracer.clone());
            // Call spans only, and the log lines inside them as their
            // events; never the library spans around them. Its own filter:
            // `RUST_LOG=warn` quiets the logs, not the traces.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    if meta.is_span() {
                        meta.target() == control::call_trace::TARGET
                    } else {
                        *meta.level() <= tracing::Level::INFO
                    }
                }));
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { traces: provider })
}

fn tracer_provider(config: &Config, endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(Default::default())
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("switchboard")
        .with_attribute(KeyValue::new("service.instance.id", config.node_name()))
        .with_attribute(KeyValue::new("switchboard.region", config.region.clone()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(control::call_trace::CallTraceIds::default())
        // By trace id alone (no parent-based rule): every node, and every
        // span of a call, makes the same choice.
        .with_sampler(Sampler::TraceIdRatioBased(config.trace_sample_ratio))
        .with_resource(resource)
        .build())
}
