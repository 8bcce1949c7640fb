//! Logs and metrics.
//!
//! Logs are one JSON object per line on stdout:
//! `{"timestamp","level","component","message","fields":{...}}`, where `component` is the
//! module below the crate root that emitted the event (`smtp`, `api`, `store`, ...) and
//! `fields` holds the event's structured fields and those of its enclosing spans. When stdout
//! is a terminal and the format is `auto`, a human-readable format is used instead.
//!
//! Metrics go to a process-wide Prometheus recorder; `/metrics` renders its handle. What is
//! recorded, and the log line with it, is in [`crate::events`].

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber. Safe to call once per process.
pub fn init_logging(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter_directive(&config.level)).map_err(|e| {
        anyhow::anyhow!(
            "invalid log.level `{}`: {e}; use error, warn, info, debug or trace",
            config.level
        )
    })?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = if json {
        builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// A bare level applies to MaiRust itself; dependencies stay at `warn` unless named.
fn filter_directive(level: &str) -> String {
    let level = level.trim();
    if matches!(
        level.to_ascii_lowercase().as_str(),
        "error" | "warn" | "info" | "debug" | "trace" | "off"
    ) {
        format!("warn,mairust={level}")
    } else {
        level.to_string()
    }
}

/// The JSON line format described in the module docs.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        // Span fields first, so the event's own fields win on a name clash.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) =
                        serde_json::from_str::<Value>(formatted.as_str())
                {
                    fields.extend(map);
                }
            }
        }
        let mut visitor = JsonVisitor(&mut fields);
        event.record(&mut visitor);
        let message = match fields.remove("message") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let meta = event.metadata();
        let component = match fields.remove("component") {
            Some(Value::String(s)) => s,
            _ => component_of(meta.target()).to_string(),
        };
        let line = LogLine {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level: meta.level().as_str(),
            component: &component,
            message: &message,
            fields: &fields,
        };
        let line = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// One log line; fields in the documented order.
#[derive(serde::Serialize)]
struct LogLine<'a> {
    timestamp: String,
    level: &'a str,
    component: &'a str,
    message: &'a str,
    fields: &'a Map<String, Value>,
}

/// `mairust::smtp::listener` → `smtp`; other crates keep their crate name.
fn component_of(target: &str) -> &str {
    let mut parts = target.split("::");
    match (parts.next(), parts.next()) {
        (Some("mairust"), Some(module)) => module,
        (Some(krate), _) => krate,
        _ => target,
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets for latencies from a fsync to a slow remote server.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the Prometheus recorder once and returns its handle.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = METRICS.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), SIZE_BUCKETS)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    crate::events::describe_metrics();
    Ok(METRICS.get_or_init(|| handle).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_is_the_first_module() {
        assert_eq!(component_of("mairust::smtp::listener"), "smtp");
        assert_eq!(component_of("mairust"), "mairust");
        assert_eq!(component_of("sqlx::query"), "sqlx");
    }

    #[test]
    fn bare_level_scopes_to_mairust() {
        assert_eq!(filter_directive("debug"), "warn,mairust=debug");
        assert_eq!(filter_directive("sqlx=info"), "sqlx=info");
    }
}
