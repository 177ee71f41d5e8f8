//! The process's tracing subscriber: where log lines go (stderr, through a non-blocking
//! writer), which pass (`--log-level`, with lifecycle events always at info or below), and
//! how they look. Text is tracing_subscriber's default line. JSON is the shape Arvados
//! services emit through logrus' `JSONFormatter`, so existing log pipelines read keepring
//! as they read keepstore: one object per line with `time`, `level`, `msg`, `PID`,
//! `ClusterID` and every event field as its own key, keys sorted.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Number, Value};
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Targets whose events (listening, draining, volumes, hand-over) are logged even when
/// `--log-level` is warn or error.
const LIFECYCLE_TARGETS: [&str; 2] = ["keepring::lifecycle", "keepring::supervisor"];

/// Keys logrus writes itself; an event field with one of these names is written as
/// `fields.<name>` instead (logrus' `prefixFieldClashes`).
const RESERVED_KEYS: [&str; 3] = ["msg", "time", "level"];

/// Fields on every JSON line, as Arvados services add them with `logrus.WithFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFields {
    pub pid: u32,
    /// Written as `ClusterID` when known (from a cluster config file).
    pub cluster_id: Option<String>,
}

/// Set once by `init`: request lines are keepstore's `response` lines (JSON) rather than
/// keepring's text fields.
static JSON_REQUEST_LINES: AtomicBool = AtomicBool::new(false);

/// Does the request log use keepstore's JSON field names (`RequestID`, `reqMethod`, …)?
pub fn json_request_lines() -> bool {
    JSON_REQUEST_LINES.load(Ordering::Relaxed)
}

/// Installs the global subscriber writing to stderr. Keep the guard alive until exit and
/// drop it before leaving: dropping it flushes the lines still queued.
pub fn init(format: LogFormat, level: Level, static_fields: StaticFields) -> WorkerGuard {
    JSON_REQUEST_LINES.store(format == LogFormat::Json, Ordering::Relaxed);
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    dispatch(format, level, static_fields, writer).init();
    guard
}

/// The subscriber `init` installs, writing to any writer (tests pass a buffer).
fn dispatch<W>(format: LogFormat, level: Level, static_fields: StaticFields, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Lifecycle events are always logged; --log-level governs the rest, such as the one
    // line per request at info.
    let filter = Targets::new()
        .with_default(level)
        .with_targets(LIFECYCLE_TARGETS.map(|target| (target, Level::INFO.max(level))));
    // A bare layer on a registry: the `fmt()` builder would add its own info-level cap
    // beneath the filter, hiding debug and trace whatever --log-level says.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .log_internal_errors(true);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => Dispatch::new(registry.with(layer).with(filter)),
        LogFormat::Json => {
            let layer = layer.event_format(LogrusJson::new(static_fields));
            Dispatch::new(registry.with(layer).with(filter))
        }
    }
}

/// `FormatEvent` writing logrus `JSONFormatter` lines (Arvados' `ctxlog` settings: UTC
/// time with nine fractional digits). Spans are not written: logrus has none.
#[derive(Debug, Clone)]
pub struct LogrusJson {
    /// `PID` and `ClusterID`, ready to copy into each line.
    static_keys: Map<String, Value>,
}

impl LogrusJson {
    pub fn new(static_fields: StaticFields) -> LogrusJson {
        let mut static_keys = Map::new();
        static_keys.insert("PID".into(), Value::from(static_fields.pid));
        if let Some(cluster_id) = static_fields.cluster_id {
            static_keys.insert("ClusterID".into(), Value::String(cluster_id));
        }
        LogrusJson { static_keys }
    }

    /// One line, without its newline. Event fields may replace `PID`/`ClusterID` (as a
    /// later `WithFields` does in logrus) but never `time`, `level` or `msg`.
    fn render(&self, now: SystemTime, event: &Event<'_>) -> Result<String, serde_json::Error> {
        let mut visitor = JsonFields {
            fields: self.static_keys.clone(),
            message: None,
        };
        event.record(&mut visitor);
        let mut line = visitor.fields;
        line.insert("time".into(), Value::String(rfc3339_nanos_utc(now)));
        line.insert("level".into(), Value::from(level_name(*event.metadata().level())));
        line.insert("msg".into(), Value::String(visitor.message.unwrap_or_default()));
        serde_json::to_string(&line)
    }
}

impl<S, N> FormatEvent<S, N> for LogrusJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let line = self.render(SystemTime::now(), event).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// logrus' level names; tracing's WARN is logrus' `warning`.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// Collects an event's fields as JSON values, each under its own key, and its message.
struct JsonFields {
    fields: Map<String, Value>,
    message: Option<String>,
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else if RESERVED_KEYS.contains(&name) {
            self.fields.insert(format!("fields.{name}"), value);
        } else {
            self.fields.insert(name.to_owned(), value);
        }
    }
}

impl Visit for JsonFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those are written as text.
        let json = Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, json);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let json = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, json);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let json = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, json);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    /// `%x` (Display), `?x` (Debug), errors and the message itself arrive here.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// `2006-01-02T15:04:05.000000000Z` (Go's layout): UTC, always nine fractional digits.
pub fn rfc3339_nanos_utc(time: SystemTime) -> String {
    let (seconds, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => (since.as_secs() as i64, since.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            match before.subsec_nanos() {
                0 => (-(before.as_secs() as i64), 0),
                nanos => (-(before.as_secs() as i64) - 1, 1_000_000_000 - nanos),
            }
        }
    };
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{nanos:09}Z")
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, by Howard
/// Hinnant's `civil_from_days`: eras of 400 years, years starting on 1 March so the leap
/// day falls last.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Shared buffer the subscriber under test writes into.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, level: Level, cluster_id: Option<&str>, log: impl FnOnce()) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let static_fields = StaticFields {
            pid: 4242,
            cluster_id: cluster_id.map(str::to_owned),
        };
        let dispatch = dispatch(format, level, static_fields, move || sink.clone());
        tracing::dispatcher::with_default(&dispatch, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn json_lines(text: &str) -> Vec<Map<String, Value>> {
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| match serde_json::from_str(line).unwrap() {
                Value::Object(object) => object,
                other => panic!("not an object: {other}"),
            })
            .collect()
    }

    fn check_time_layout(time: &str) {
        // 2006-01-02T15:04:05.000000000Z
        assert_eq!(time.len(), 30, "{time}");
        for (index, byte) in time.bytes().enumerate() {
            match index {
                4 | 7 => assert_eq!(byte, b'-', "{time}"),
                10 => assert_eq!(byte, b'T', "{time}"),
                13 | 16 => assert_eq!(byte, b':', "{time}"),
                19 => assert_eq!(byte, b'.', "{time}"),
                29 => assert_eq!(byte, b'Z', "{time}"),
                _ => assert!(byte.is_ascii_digit(), "{time}"),
            }
        }
    }

    #[test]
    fn json_line_has_logrus_keys_and_native_types() {
        let address: std::net::SocketAddr = "127.0.0.1:25107".parse().unwrap();
        let text = capture(LogFormat::Json, Level::INFO, Some("zzzzz"), || {
            tracing::warn!(
                name = "vol \"a\"",
                count = 3u64,
                delta = -2i64,
                ratio = 0.5,
                not_a_number = f64::NAN,
                ok = true,
                address = %address,
                list = ?vec![1, 2],
                "cannot use volume {}",
                7
            );
        });
        let lines = json_lines(&text);
        assert_eq!(lines.len(), 1, "{text}");
        let line = &lines[0];
        assert_eq!(line["level"], "warning");
        assert_eq!(line["msg"], "cannot use volume 7");
        assert_eq!(line["PID"], 4242);
        assert_eq!(line["ClusterID"], "zzzzz");
        assert_eq!(line["name"], "vol \"a\"");
        assert_eq!(line["count"], 3);
        assert!(line["count"].is_u64());
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["not_a_number"], "NaN");
        assert_eq!(line["ok"], true);
        assert_eq!(line["address"], "127.0.0.1:25107");
        assert_eq!(line["list"], "[1, 2]");
        check_time_layout(line["time"].as_str().unwrap());
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        let expected = [
            "ClusterID",
            "PID",
            "address",
            "count",
            "delta",
            "level",
            "list",
            "msg",
            "name",
            "not_a_number",
            "ok",
            "ratio",
            "time",
        ];
        assert_eq!(keys, expected);
        // Sorted on the wire too, as logrus writes them.
        assert!(
            text.starts_with("{\"ClusterID\":\"zzzzz\",\"PID\":4242,\"address\":"),
            "{text}"
        );
    }

    #[test]
    fn cluster_id_is_absent_when_unknown() {
        let text = capture(LogFormat::Json, Level::INFO, None, || tracing::info!("started"));
        let line = &json_lines(&text)[0];
        assert!(!line.contains_key("ClusterID"), "{text}");
        assert_eq!(line["PID"], 4242);
        assert_eq!(line["level"], "info");
        assert_eq!(line["msg"], "started");
    }

    #[test]
    fn fields_named_like_logrus_keys_are_prefixed() {
        let text = capture(LogFormat::Json, Level::INFO, None, || {
            tracing::error!(msg = "field", time = 5, level = "high", "the message");
        });
        let line = &json_lines(&text)[0];
        assert_eq!(line["msg"], "the message");
        assert_eq!(line["level"], "error");
        check_time_layout(line["time"].as_str().unwrap());
        assert_eq!(line["fields.msg"], "field");
        assert_eq!(line["fields.time"], 5);
        assert_eq!(line["fields.level"], "high");
    }

    #[test]
    fn message_only_and_messageless_events() {
        let text = capture(LogFormat::Json, Level::INFO, None, || {
            tracing::info!(message = "given as a field");
            tracing::info!(worker = 0);
        });
        let lines = json_lines(&text);
        assert_eq!(lines[0]["msg"], "given as a field");
        assert_eq!(lines[1]["msg"], "");
        assert_eq!(lines[1]["worker"], 0);
    }

    #[test]
    fn level_filter_keeps_lifecycle_at_info_and_honours_debug() {
        let text = capture(LogFormat::Json, Level::WARN, None, || {
            tracing::info!("request");
            tracing::info!(target: "keepring::lifecycle", "listening on 127.0.0.1:1");
            tracing::info!(target: "keepring::lifecycle::supervisor", "draining");
            tracing::debug!(target: "keepring::lifecycle", "detail");
        });
        let messages: Vec<Value> = json_lines(&text).into_iter().map(|line| line["msg"].clone()).collect();
        assert_eq!(messages, ["listening on 127.0.0.1:1", "draining"]);
        let text = capture(LogFormat::Json, Level::DEBUG, None, || tracing::debug!("detail"));
        assert_eq!(json_lines(&text)[0]["level"], "debug");
    }

    #[test]
    fn text_lines_keep_key_equals_value() {
        let text = capture(LogFormat::Text, Level::INFO, None, || {
            tracing::info!(worker = 0, method = %"PUT", status = 200u16, "request");
        });
        assert!(text.ends_with('\n'), "{text}");
        assert!(text.contains(" INFO "), "{text}");
        assert!(text.contains("request worker=0 method=PUT status=200"), "{text}");
        assert!(!text.contains('\u{1b}'), "no ANSI escapes: {text}");
    }

    fn at(seconds: i64, nanos: u32) -> String {
        let time = match u64::try_from(seconds) {
            Ok(after) => UNIX_EPOCH + Duration::new(after, nanos),
            Err(_) => UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()) + Duration::from_nanos(nanos.into()),
        };
        rfc3339_nanos_utc(time)
    }

    #[test]
    fn timestamps_are_utc_with_nine_digits() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(at(951_868_799, 999_999_999), "2000-02-29T23:59:59.999999999Z");
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000000000Z");
        assert_eq!(at(1_709_164_800, 1), "2024-02-29T00:00:00.000000001Z");
        assert_eq!(at(1_767_225_600, 0), "2026-01-01T00:00:00.000000000Z");
        assert_eq!(at(1_767_225_599, 500_000_000), "2025-12-31T23:59:59.500000000Z");
        // 2100 is not a leap year: 28 February is followed by 1 March.
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z");
        // Before the epoch (1900 is not a leap year either).
        assert_eq!(at(-1, 500_000_000), "1969-12-31T23:59:59.500000000Z");
        assert_eq!(at(-2_203_891_200, 0), "1900-03-01T00:00:00.000000000Z");
    }

    #[test]
    fn civil_dates_of_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }
}
