//! The scrape as it was written before families were built as data (text, then JSON
//! re-parsed from the text), kept while the new writers are proven byte for byte equal.

#![allow(dead_code)]

use super::*;
use std::fmt::Write;

/// The whole exposition: every family with `# HELP` and `# TYPE`, sums over threads.
pub fn render(registry: &Registry, gauges: &Gauges) -> String {
    let threads = registry.snapshot();
    let mut out = String::with_capacity(16 * 1024);
    render_requests(&mut out, &threads);
    render_volumes(&mut out, &threads, gauges);
    render_gauges(&mut out, gauges);
    render_service(&mut out, &threads, gauges);
    render_connections(&mut out, &threads);
    out
}

/// The same families as `render`, as `/metrics.json` serves them in keepstore: a JSON
/// array of Prometheus MetricFamily messages in protobuf's JSON mapping (what Go's jsonpb
/// writes: lowerCamelCase fields, enum names, 64-bit counts as strings). Built from the
/// text exposition, so both endpoints always carry the same families and values.
pub fn render_json(registry: &Registry, gauges: &Gauges) -> String {
    text_to_json(&render(registry, gauges)).to_string()
}

type Labels = Vec<(String, String)>;

/// One sample line of the text exposition: `name{labels} value`.
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// One summary or histogram series being gathered: its labels (without `le`), its
/// `sampleSum`/`sampleCount` so far, and its buckets.
struct Series {
    labels: Labels,
    fields: serde_json::Map<String, serde_json::Value>,
    buckets: Vec<serde_json::Value>,
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` with the exposition escapes (`\\`, `\"`, `\n`) undone.
fn parse_labels(text: &str) -> Option<Labels> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (index, '"') => break index,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.push((key.to_string(), value));
        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
    }
    Some(labels)
}

fn json_number(value: f64) -> serde_json::Value {
    if value.is_finite() {
        serde_json::json!(value)
    } else if value > 0.0 {
        serde_json::json!("Infinity")
    } else {
        serde_json::json!("-Infinity")
    }
}

fn json_labels(labels: &[(String, String)]) -> serde_json::Value {
    labels
        .iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect()
}

/// Text exposition → MetricFamily JSON. Summaries and histograms gather their `_sum`,
/// `_count` and `_bucket` lines by label set (without `le`).
fn text_to_json(text: &str) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut families: Vec<Value> = Vec::new();
    let mut help = String::new();
    let mut current: Option<(String, String, Vec<Sample>)> = None;
    let finish = |families: &mut Vec<Value>, help: &str, family: Option<(String, String, Vec<Sample>)>| {
        let Some((name, kind, samples)) = family else { return };
        let metrics: Vec<Value> = match kind.as_str() {
            "summary" | "histogram" => {
                let mut groups: Vec<Series> = Vec::new();
                for sample in samples {
                    let labels: Labels = sample.labels.iter().filter(|(key, _)| key != "le").cloned().collect();
                    let index = match groups.iter().position(|series| series.labels == labels) {
                        Some(index) => index,
                        None => {
                            groups.push(Series {
                                labels,
                                fields: Map::new(),
                                buckets: Vec::new(),
                            });
                            groups.len() - 1
                        }
                    };
                    let Series { fields, buckets, .. } = &mut groups[index];
                    let suffix = sample.name.strip_prefix(name.as_str()).unwrap_or("");
                    match suffix {
                        "_sum" => {
                            fields.insert("sampleSum".into(), json_number(sample.value));
                        }
                        "_count" => {
                            fields.insert("sampleCount".into(), json!((sample.value as u64).to_string()));
                        }
                        "_bucket" => {
                            let bound = sample.labels.iter().find(|(key, _)| key == "le");
                            let bound = bound.map_or(f64::INFINITY, |(_, value)| match value.as_str() {
                                "+Inf" => f64::INFINITY,
                                other => other.parse().unwrap_or(f64::INFINITY),
                            });
                            buckets.push(json!({
                                "cumulativeCount": (sample.value as u64).to_string(),
                                "upperBound": json_number(bound),
                            }));
                        }
                        _ => {}
                    }
                }
                groups
                    .into_iter()
                    .map(
                        |Series {
                             labels,
                             mut fields,
                             buckets,
                         }| {
                            if !buckets.is_empty() {
                                fields.insert("bucket".into(), Value::Array(buckets));
                            }
                            let mut metric = Map::new();
                            if !labels.is_empty() {
                                metric.insert("label".into(), json_labels(&labels));
                            }
                            metric.insert(kind.clone(), Value::Object(fields));
                            Value::Object(metric)
                        },
                    )
                    .collect()
            }
            _ => samples
                .iter()
                .map(|sample| {
                    let mut metric = Map::new();
                    if !sample.labels.is_empty() {
                        metric.insert("label".into(), json_labels(&sample.labels));
                    }
                    metric.insert(kind.clone(), json!({"value": json_number(sample.value)}));
                    Value::Object(metric)
                })
                .collect(),
        };
        families.push(json!({
            "name": name,
            "help": help,
            "type": kind.to_ascii_uppercase(),
            "metric": metrics,
        }));
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            finish(&mut families, &help, current.take());
            help = rest.split_once(' ').map_or("", |(_, text)| text).to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                current = Some((name.to_string(), kind.to_string(), Vec::new()));
            }
        } else if let (Some((_, _, samples)), Some(sample)) = (current.as_mut(), parse_sample(line)) {
            samples.push(sample);
        }
    }
    finish(&mut families, &help, current.take());
    Value::Array(families)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped (exposition format rules).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn status_label(status: u16) -> String {
    if status == 0 {
        "other".to_string()
    } else {
        status.to_string()
    }
}

fn seconds(micros: u64) -> String {
    format!("{}", micros as f64 / 1e6)
}

fn render_requests(out: &mut String, threads: &[Arc<Counters>]) {
    let sum = |pick: &dyn Fn(&Counters) -> &AtomicU64| threads.iter().map(|counters| get(pick(counters))).sum::<u64>();
    family(
        out,
        "keepring_requests_total",
        "counter",
        "Requests answered, by method and status.",
    );
    let mut seen = Vec::new();
    for (method_index, method) in METHODS.iter().enumerate() {
        for (status_index, status) in STATUSES.iter().enumerate() {
            let count = sum(&|counters| &counters.requests[method_index][status_index]);
            if count > 0 {
                let micros = sum(&|counters| &counters.duration_micros[method_index][status_index]);
                seen.push((method, status_label(*status), count, micros));
                let _ = writeln!(
                    out,
                    "keepring_requests_total{{method=\"{method}\",code=\"{}\"}} {count}",
                    status_label(*status)
                );
            }
        }
    }
    family(
        out,
        "request_duration_seconds",
        "summary",
        "Time from the request head to the last byte of the response, by code and method.",
    );
    for (method, code, count, micros) in &seen {
        let labels = format!("code=\"{code}\",method=\"{}\"", method.to_ascii_lowercase());
        let _ = writeln!(out, "request_duration_seconds_sum{{{labels}}} {}", seconds(*micros));
        let _ = writeln!(out, "request_duration_seconds_count{{{labels}}} {count}");
    }
    family(
        out,
        "keepring_request_duration_seconds",
        "histogram",
        "Time from the request head to the last byte of the response.",
    );
    let mut cumulative = 0u64;
    let mut total_micros = 0u64;
    for bucket in 0..=DURATION_BUCKETS_MICROS.len() {
        cumulative += sum(&|counters| &counters.duration_buckets[bucket]);
        let bound = match DURATION_BUCKETS_MICROS.get(bucket) {
            Some(micros) => seconds(*micros),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(
            out,
            "keepring_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    for (_, _, _, micros) in &seen {
        total_micros += micros;
    }
    let _ = writeln!(out, "keepring_request_duration_seconds_sum {}", seconds(total_micros));
    let _ = writeln!(out, "keepring_request_duration_seconds_count {cumulative}");
    family(
        out,
        "keepring_http_bytes_total",
        "counter",
        "Request body bytes read (in) and response body bytes written (out).",
    );
    let _ = writeln!(
        out,
        "keepring_http_bytes_total{{direction=\"in\"}} {}",
        sum(&|counters| &counters.bytes_in)
    );
    let _ = writeln!(
        out,
        "keepring_http_bytes_total{{direction=\"out\"}} {}",
        sum(&|counters| &counters.bytes_out)
    );
}

/// Per-volume sums, keyed by device id (keepstore's label) and UUID.
#[derive(Default)]
struct VolumeTotals {
    operations: [u64; VOLUME_OPS.len()],
    errors: [u64; VOLUME_ERRORS.len()],
    bytes_in: u64,
    bytes_out: u64,
}

fn render_volumes(out: &mut String, threads: &[Arc<Counters>], gauges: &Gauges) {
    let mut totals: BTreeMap<(String, String), VolumeTotals> = BTreeMap::new();
    for (uuid, device_id, _) in &gauges.volumes_free {
        totals.entry((device_id.clone(), uuid.clone())).or_default();
    }
    for counters in threads {
        for volume in lock(&counters.volumes).iter() {
            let entry = totals
                .entry((volume.device_id.clone(), volume.uuid.clone()))
                .or_default();
            for (index, counter) in volume.operations.iter().enumerate() {
                entry.operations[index] += get(counter);
            }
            for (index, counter) in volume.errors.iter().enumerate() {
                entry.errors[index] += get(counter);
            }
            entry.bytes_in += get(&volume.bytes_in);
            entry.bytes_out += get(&volume.bytes_out);
        }
    }
    let labels = |device_id: &str, uuid: &str| format!("device_id=\"{}\",uuid=\"{}\"", label(device_id), label(uuid));
    let per_volume = |out: &mut String,
                      name: &str,
                      help: &str,
                      label_key: &str,
                      names: &[&str],
                      value: &dyn Fn(&VolumeTotals, usize) -> u64| {
        family(out, name, "counter", help);
        for ((device_id, uuid), total) in &totals {
            for (index, kind) in names.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{{},{label_key}=\"{kind}\"}} {}",
                    labels(device_id, uuid),
                    value(total, index)
                );
            }
        }
    };
    let op_names: Vec<&str> = VOLUME_OPS.iter().map(|(_, name)| *name).collect();
    let error_names: Vec<&str> = VOLUME_ERRORS.iter().map(|(_, name)| *name).collect();
    per_volume(
        out,
        "arvados_keepstore_volume_operations",
        "Operations on each volume.",
        "operation",
        &op_names,
        &|total, index| total.operations[index],
    );
    per_volume(
        out,
        "arvados_keepstore_volume_errors",
        "Failed operations on each volume.",
        "error_type",
        &error_names,
        &|total, index| total.errors[index],
    );
    family(
        out,
        "arvados_keepstore_volume_io_bytes",
        "counter",
        "Block bytes written to (in) and read from (out) each volume.",
    );
    for ((device_id, uuid), total) in &totals {
        let labels = labels(device_id, uuid);
        let _ = writeln!(
            out,
            "arvados_keepstore_volume_io_bytes{{{labels},direction=\"in\"}} {}",
            total.bytes_in
        );
        let _ = writeln!(
            out,
            "arvados_keepstore_volume_io_bytes{{{labels},direction=\"out\"}} {}",
            total.bytes_out
        );
    }
    family(
        out,
        "keepring_volume_free_bytes",
        "gauge",
        "Bytes available to keepring on each volume's filesystem.",
    );
    for (uuid, device_id, free) in &gauges.volumes_free {
        if let Some(free) = free {
            let _ = writeln!(out, "keepring_volume_free_bytes{{{}}} {free}", labels(device_id, uuid));
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn render_gauges(out: &mut String, gauges: &Gauges) {
    let unit = gauges.buffer_unit_bytes.max(1);
    gauge(
        out,
        "arvados_keepstore_bufferpool_allocated_bytes",
        "Bytes of block buffers held by this process.",
        gauges.buffer_own_bytes,
    );
    gauge(
        out,
        "arvados_keepstore_bufferpool_max_buffers",
        "Block buffer budget, in 64 MiB units (--max-buffers).",
        gauges.buffer_total_bytes / unit,
    );
    gauge(
        out,
        "arvados_keepstore_bufferpool_inuse_buffers",
        "Block buffers in use by this process, in 64 MiB units, rounded up.",
        gauges.buffer_own_bytes.div_ceil(unit),
    );
    gauge(
        out,
        "keepring_bufferpool_inuse_bytes",
        "Bytes of the budget in use by every process sharing it (a restarting peer too).",
        gauges.buffer_in_use_bytes,
    );
    gauge(
        out,
        "keepring_bufferpool_total_bytes",
        "Bytes of the buffer budget.",
        gauges.buffer_total_bytes,
    );
    gauge(
        out,
        "arvados_keepstore_trash_queue_pending_entries",
        "Trash list items waiting.",
        gauges.trash_pending,
    );
    gauge(
        out,
        "arvados_keepstore_trash_queue_inprogress_entries",
        "Trash list items being processed.",
        gauges.trash_in_progress,
    );
    gauge(
        out,
        "arvados_keepstore_pull_queue_pending_entries",
        "Pull list items waiting.",
        gauges.pull_pending,
    );
    gauge(
        out,
        "arvados_keepstore_pull_queue_inprogress_entries",
        "Pull list items being processed.",
        gauges.pull_in_progress,
    );
    gauge(
        out,
        "keepring_draining",
        "1 once the process is draining (SIGTERM), else 0.",
        u64::from(gauges.draining),
    );
}

/// `arvados_config_{source,load}_timestamp_seconds{sha256}`: the config file in force.
fn render_config(out: &mut String, (sha256, modified, loaded): &(String, f64, f64)) {
    let sha256 = label(sha256);
    let timestamps = [
        (
            "arvados_config_source_timestamp_seconds",
            "Timestamp of config file when it was loaded.",
            modified,
        ),
        (
            "arvados_config_load_timestamp_seconds",
            "Time when config file was loaded.",
            loaded,
        ),
    ];
    for (name, help, value) in timestamps {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{sha256=\"{sha256}\"}} {value}");
    }
}

/// Series every Arvados service exports, with keepstore's names and labels: the request
/// limiter's (`queue="api"`), the age of the oldest request, the config in force, the
/// version.
/// Connections: open now, the limit reached, idle ones closed to admit new clients.
fn render_connections(out: &mut String, threads: &[Arc<Counters>]) {
    let sum = |field: fn(&Counters) -> &AtomicU64| threads.iter().map(|thread| get(field(thread))).sum::<u64>();
    gauge(
        out,
        "keepring_open_connections",
        "Client connections open (counted every second).",
        sum(|counters| &counters.open_connections),
    );
    counter(
        out,
        "keepring_connection_limit_reached_total",
        "Times a worker was at --max-connections when a client connected.",
        sum(|counters| &counters.connection_limit_hits),
    );
    counter(
        out,
        "keepring_idle_connections_closed_total",
        "Idle keep-alive connections closed (least recently used first) to admit new clients.",
        sum(|counters| &counters.idle_connections_closed),
    );
}

fn render_service(out: &mut String, threads: &[Arc<Counters>], gauges: &Gauges) {
    let active: u64 = threads.iter().map(|thread| get(&thread.active_requests)).sum();
    let oldest = threads
        .iter()
        .map(|thread| get(&thread.oldest_active_micros))
        .filter(|started| *started > 0)
        .min();
    let age_micros = oldest.map_or(0, |started| gauges.now_micros.saturating_sub(started));
    let api_gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{queue=\"api\"}} {value}");
    };
    api_gauge(
        out,
        "arvados_concurrent_requests",
        "Number of requests in progress",
        active,
    );
    api_gauge(
        out,
        "arvados_max_concurrent_requests",
        "Maximum number of concurrent requests (0: no limit)",
        gauges.max_concurrent_requests,
    );
    api_gauge(
        out,
        "arvados_max_queued_requests",
        "Maximum number of queued requests",
        gauges.max_queued_requests,
    );
    family(out, "arvados_queued_requests", "gauge", "Number of requests in queue");
    for (priority, value) in [("high", 0), ("low", 0), ("normal", gauges.queued_requests)] {
        let _ = writeln!(
            out,
            "arvados_queued_requests{{priority=\"{priority}\",queue=\"api\"}} {value}"
        );
    }
    family(
        out,
        "arvados_max_active_request_age_seconds",
        "gauge",
        "Age of oldest active request",
    );
    let _ = writeln!(out, "arvados_max_active_request_age_seconds {}", seconds(age_micros));
    if let Some(config) = &gauges.config {
        render_config(out, config);
    }
    family(out, "arvados_version_running", "gauge", "Indicated version is running.");
    let _ = writeln!(out, "arvados_version_running{{version=\"{ARVADOS_VERSION}\"}} 1");
    family(out, "keepring_build_info", "gauge", "keepring's own version.");
    let _ = writeln!(
        out,
        "keepring_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}
