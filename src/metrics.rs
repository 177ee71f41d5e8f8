//! Counters for `GET /metrics` (keep-protocol.md §3.7) and their Prometheus text.
//!
//! Every thread that serves or moves blocks (a core worker, a chore) owns a `Recorder`:
//! its own `Counters` of `AtomicU64`s that only it writes (Relaxed: nothing is ordered by
//! them), registered once in the node's `Registry`. A scrape sums every registered set,
//! so recording never touches a cache line another core writes. Per-volume counters are
//! found through a thread-local map, so the hot path takes no lock either; the registry
//! lock is taken when a thread first meets a volume and when scraping.
//!
//! Names follow keepstore's where it has one (`arvados_keepstore_*`,
//! `request_duration_seconds`); keepring's own series are `keepring_*`. This module
//! formats and sums; the gauges that live elsewhere (buffer budget, queues, drain flag,
//! free space) are read by the caller and passed in as `Gauges`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::volume::Volume;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request methods counted by name; anything else is `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "DELETE", "TOUCH", "OPTIONS", "other"];

/// Statuses keepring answers (error.rs); anything else is counted under `other`.
const STATUSES: [u16; 18] = [
    200, 400, 401, 403, 404, 405, 408, 411, 413, 422, 431, 499, 500, 501, 502, 503, 507, 0,
];

/// Upper bounds of the request duration histogram, in microseconds: 0.1 ms (a cached
/// small GET) to 10 s (a 64 MiB transfer to a slow client), about 2.5× apart.
const DURATION_BUCKETS_MICROS: [u64; 13] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000,
];

/// What was done to a volume (`arvados_keepstore_volume_operations{operation}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeOp {
    Read,
    Write,
    Touch,
    Trash,
    Untrash,
    Unlink,
}

const VOLUME_OPS: [(VolumeOp, &str); 6] = [
    (VolumeOp::Read, "read"),
    (VolumeOp::Write, "write"),
    (VolumeOp::Touch, "touch"),
    (VolumeOp::Trash, "trash"),
    (VolumeOp::Untrash, "untrash"),
    (VolumeOp::Unlink, "unlink"),
];

/// How a volume operation failed (`arvados_keepstore_volume_errors{error_type}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeErrorKind {
    Io,
    Full,
    Checksum,
}

const VOLUME_ERRORS: [(VolumeErrorKind, &str); 3] = [
    (VolumeErrorKind::Io, "io"),
    (VolumeErrorKind::Full, "full"),
    (VolumeErrorKind::Checksum, "checksum"),
];

fn zeroes<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn add(counter: &AtomicU64, amount: u64) {
    // Only the owning thread writes: a load and a store would do, fetch_add is as cheap
    // uncontended and stays right if that ever changes.
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// Microseconds since the Unix epoch (0 before it).
pub fn unix_micros(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_micros() as u64)
        .unwrap_or(0)
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// One volume's counters, as seen by one thread.
pub struct VolumeCounters {
    uuid: String,
    device_id: String,
    operations: [AtomicU64; VOLUME_OPS.len()],
    errors: [AtomicU64; VOLUME_ERRORS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl VolumeCounters {
    fn new(volume: &Volume) -> Self {
        VolumeCounters {
            uuid: volume.uuid.clone(),
            device_id: volume.device_id.clone(),
            operations: zeroes(),
            errors: zeroes(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    pub fn operation(&self, op: VolumeOp) {
        let index = VOLUME_OPS.iter().position(|(known, _)| *known == op).unwrap_or(0);
        add(&self.operations[index], 1);
    }

    pub fn error(&self, kind: VolumeErrorKind) {
        let index = VOLUME_ERRORS.iter().position(|(known, _)| *known == kind).unwrap_or(0);
        add(&self.errors[index], 1);
    }

    /// Bytes written to the volume.
    pub fn wrote(&self, bytes: u64) {
        add(&self.bytes_in, bytes);
    }

    /// Bytes read from the volume.
    pub fn read(&self, bytes: u64) {
        add(&self.bytes_out, bytes);
    }
}

/// One thread's request counters.
pub struct Counters {
    requests: [[AtomicU64; STATUSES.len()]; METHODS.len()],
    duration_micros: [[AtomicU64; STATUSES.len()]; METHODS.len()],
    /// Cumulative at render time; stored per bucket (the last is +Inf).
    duration_buckets: [AtomicU64; DURATION_BUCKETS_MICROS.len() + 1],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    volumes: Mutex<Vec<Arc<VolumeCounters>>>,
    /// Requests being served by this thread, and when the oldest of them started (Unix
    /// microseconds; 0: none), as last counted (a worker counts every second).
    active_requests: AtomicU64,
    oldest_active_micros: AtomicU64,
    /// Connections open on this thread (counted with the activity), times its connection
    /// limit was reached, and idle connections it closed to admit new ones.
    open_connections: AtomicU64,
    connection_limit_hits: AtomicU64,
    idle_connections_closed: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        Counters {
            requests: std::array::from_fn(|_| zeroes()),
            duration_micros: std::array::from_fn(|_| zeroes()),
            duration_buckets: zeroes(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            volumes: Mutex::new(Vec::new()),
            active_requests: AtomicU64::new(0),
            oldest_active_micros: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            connection_limit_hits: AtomicU64::new(0),
            idle_connections_closed: AtomicU64::new(0),
        }
    }
}

/// Every thread's counters, for the scrape.
#[derive(Default)]
pub struct Registry {
    threads: Mutex<Vec<Arc<Counters>>>,
}

impl Registry {
    /// A recorder for the calling thread (a worker at start, a chore at start).
    pub fn register(&self) -> Recorder {
        let counters = Arc::new(Counters::new());
        lock(&self.threads).push(counters.clone());
        Recorder {
            counters,
            volumes: RefCell::new(HashMap::new()),
        }
    }

    fn snapshot(&self) -> Vec<Arc<Counters>> {
        lock(&self.threads).clone()
    }
}

/// A poisoned lock only means another thread panicked while pushing to a Vec: the Vec is
/// still whole, so keep counting.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writing side, owned by one thread (`!Sync`: its volume map is a `RefCell`).
pub struct Recorder {
    counters: Arc<Counters>,
    volumes: RefCell<HashMap<String, Arc<VolumeCounters>>>,
}

impl Recorder {
    /// One answered request (called where the request is logged).
    pub fn request(&self, method: &str, status: u16, bytes_in: u64, bytes_out: u64, micros: u64) {
        let method_index = METHODS
            .iter()
            .position(|known| *known == method)
            .unwrap_or(METHODS.len() - 1);
        let status_index = STATUSES
            .iter()
            .position(|known| *known == status)
            .unwrap_or(STATUSES.len() - 1);
        let counters = &self.counters;
        add(&counters.requests[method_index][status_index], 1);
        add(&counters.duration_micros[method_index][status_index], micros);
        let bucket = DURATION_BUCKETS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(DURATION_BUCKETS_MICROS.len());
        add(&counters.duration_buckets[bucket], 1);
        add(&counters.bytes_in, bytes_in);
        add(&counters.bytes_out, bytes_out);
    }

    /// Requests this thread serves now and the Unix microsecond the oldest began (0: none).
    pub fn set_activity(&self, active: u64, oldest_started_micros: u64) {
        self.counters.active_requests.store(active, Ordering::Relaxed);
        self.counters
            .oldest_active_micros
            .store(oldest_started_micros, Ordering::Relaxed);
    }

    /// Connections open on this thread now.
    pub fn set_open_connections(&self, open: u64) {
        self.counters.open_connections.store(open, Ordering::Relaxed);
    }

    /// The connection limit was reached; `closed` idle connections were closed for room.
    pub fn connection_limit_reached(&self, closed: u64) {
        add(&self.counters.connection_limit_hits, 1);
        add(&self.counters.idle_connections_closed, closed);
    }

    /// This thread's counters for `volume`, registered on first use.
    pub fn volume(&self, volume: &Volume) -> Arc<VolumeCounters> {
        if let Some(found) = self.volumes.borrow().get(&volume.uuid) {
            return found.clone();
        }
        let created = Arc::new(VolumeCounters::new(volume));
        lock(&self.counters.volumes).push(created.clone());
        self.volumes.borrow_mut().insert(volume.uuid.clone(), created.clone());
        created
    }
}

/// Gauges read by the caller at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub buffer_unit_bytes: u64,
    pub buffer_total_bytes: u64,
    pub buffer_in_use_bytes: u64,
    pub buffer_own_bytes: u64,
    pub trash_pending: u64,
    pub trash_in_progress: u64,
    pub pull_pending: u64,
    pub pull_in_progress: u64,
    pub draining: bool,
    /// (uuid, device_id, free bytes or None when statvfs failed) per current volume.
    pub volumes_free: Vec<(String, String, Option<u64>)>,
    /// The request limiter: its bounds (0 active: no limit) and requests waiting now.
    pub max_concurrent_requests: u64,
    pub max_queued_requests: u64,
    pub queued_requests: u64,
    /// The cluster config in force: (sha256, file mtime, load time), Unix seconds.
    pub config: Option<(String, f64, f64)>,
    /// Unix microseconds now, to age the oldest request.
    pub now_micros: u64,
}

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

/// The Arvados release whose keepstore protocol keepring speaks: `arvados_version_running`
/// carries it, because `arvados-server check` flags a node whose version differs from
/// its own (keepring's own version is in `keepring_build_info`).
pub const ARVADOS_VERSION: &str = "3.2.1";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::VolumeOptions;
    use std::path::Path;

    fn volume(uuid: &str) -> Volume {
        Volume::unchecked(uuid, Path::new("/v"), &VolumeOptions::default())
    }

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn sums_every_thread_and_formats_each_line() {
        let registry = Registry::default();
        let first = registry.register();
        let second = registry.register();
        first.request("GET", 200, 0, 11, 300);
        second.request("GET", 200, 0, 5, 20_000_000);
        second.request("BREW", 418, 7, 0, 50);
        let vol = volume("zzzzz-nyw5e-000000000000000");
        first.volume(&vol).operation(VolumeOp::Read);
        second.volume(&vol).operation(VolumeOp::Read);
        second.volume(&vol).error(VolumeErrorKind::Full);
        let gauges = Gauges {
            buffer_unit_bytes: 10,
            buffer_total_bytes: 100,
            buffer_own_bytes: 11,
            draining: true,
            ..Gauges::default()
        };
        let text = render(&registry, &gauges);
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(!series.contains(' ') || series.contains('"'), "{line}");
        }
        assert_eq!(
            value_of(&text, "keepring_requests_total{method=\"GET\",code=\"200\"}"),
            Some(2.0)
        );
        assert_eq!(
            value_of(&text, "keepring_requests_total{method=\"other\",code=\"other\"}"),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, "keepring_http_bytes_total{direction=\"out\"}"),
            Some(16.0)
        );
        assert_eq!(
            value_of(&text, "keepring_request_duration_seconds_bucket{le=\"0.0005\"}"),
            Some(2.0)
        );
        assert_eq!(
            value_of(&text, "keepring_request_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(3.0)
        );
        let ops = "arvados_keepstore_volume_operations{device_id=\"/v\",\
                   uuid=\"zzzzz-nyw5e-000000000000000\",operation=\"read\"}";
        assert_eq!(value_of(&text, ops), Some(2.0));
        assert_eq!(value_of(&text, "arvados_keepstore_bufferpool_inuse_buffers"), Some(2.0));
        assert_eq!(value_of(&text, "keepring_draining"), Some(1.0));
    }

    #[test]
    fn json_keeps_escaped_label_values_counts_and_infinite_bounds() {
        let value = "q\"uo\\te\nnl,}";
        let text = format!(
            "# HELP x A counter.\n# TYPE x counter\nx{{a=\"{}\",b=\"2\"}} 3\n\
             # HELP h A histogram.\n# TYPE h histogram\nh_bucket{{le=\"0.5\"}} 1\nh_bucket{{le=\"+Inf\"}} 4\n\
             h_sum 2.5\nh_count 4\n",
            label(value)
        );
        let json = text_to_json(&text);
        assert_eq!(
            json[0],
            serde_json::json!({
                "name": "x", "help": "A counter.", "type": "COUNTER",
                "metric": [{"label": [{"name": "a", "value": value}, {"name": "b", "value": "2"}], "counter": {"value": 3.0}}]
            })
        );
        assert_eq!(
            json[1]["metric"][0]["histogram"],
            serde_json::json!({
                "sampleSum": 2.5, "sampleCount": "4",
                "bucket": [{"cumulativeCount": "1", "upperBound": 0.5}, {"cumulativeCount": "4", "upperBound": "Infinity"}]
            })
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
