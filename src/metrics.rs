//! Counters for `GET /metrics` (keep-protocol.md §3.7), as Prometheus text and as JSON.
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
//! free space, each volume's health and drive error totals) are read by the caller and
//! passed in as `Gauges`.
//!
//! A scrape builds every family once as data (`Family`: name, help, kind, and per series
//! its labels and `Measure`) and writes that list either as the text exposition
//! (`render`) or as keepstore's `/metrics.json` (`render_json`), so the two forms cannot
//! drift apart and neither is parsed back.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::hasher::HashCounts;
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
    scrub: [AtomicU64; SCRUB_COUNTS],
    /// How long the last full scrub pass took, in seconds (a gauge: the last one stored).
    scrub_pass_secs: AtomicU64,
}

/// The scrubber's counters per volume, and copies quarantined by anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubCount {
    /// Bytes the scrubber read and hashed.
    Bytes,
    /// Stored copies it checked.
    Blocks,
    /// Copies it found failing their MD5.
    Corrupt,
    /// Copies set aside (`volume::quarantine`), by the scrubber or a GET.
    Quarantined,
}

const SCRUB_COUNTS: usize = 4;

impl VolumeCounters {
    fn new(volume: &Volume) -> Self {
        VolumeCounters {
            uuid: volume.uuid.clone(),
            device_id: volume.device_id.clone(),
            operations: zeroes(),
            errors: zeroes(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            scrub: zeroes(),
            scrub_pass_secs: AtomicU64::new(0),
        }
    }

    pub fn scrub(&self, count: ScrubCount, amount: u64) {
        add(&self.scrub[count as usize], amount);
    }

    /// A full scrub pass of the volume ended; it took `secs`.
    pub fn scrub_pass(&self, secs: u64) {
        self.scrub_pass_secs.store(secs, Ordering::Relaxed);
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
    /// This thread's batched MD5 (`hasher`), as last counted: kernel calls, chunks and
    /// bytes hashed.
    md5_batches: AtomicU64,
    md5_chunks: AtomicU64,
    md5_bytes: AtomicU64,
    /// Its kernel calls' rounds (`md5lanes::Rounds`): bytes hashed in SIMD lanes, the
    /// room those rounds had, bytes hashed one stream at a time.
    md5_lane_bytes: AtomicU64,
    md5_room_bytes: AtomicU64,
    md5_single_bytes: AtomicU64,
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
            md5_batches: AtomicU64::new(0),
            md5_chunks: AtomicU64::new(0),
            md5_bytes: AtomicU64::new(0),
            md5_lane_bytes: AtomicU64::new(0),
            md5_room_bytes: AtomicU64::new(0),
            md5_single_bytes: AtomicU64::new(0),
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
            volumes: RefCell::new(HashMap::default()),
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
    volumes: RefCell<HashMap<String, Arc<VolumeCounters>, BuildHasherDefault<UuidHasher>>>,
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

    /// This thread's hasher totals so far: batches (kernel calls), chunks, bytes, and
    /// what its rounds did.
    pub fn set_md5_counts(&self, hashed: HashCounts) {
        let counters = &self.counters;
        counters.md5_batches.store(hashed.batches, Ordering::Relaxed);
        counters.md5_chunks.store(hashed.chunks, Ordering::Relaxed);
        counters.md5_bytes.store(hashed.bytes, Ordering::Relaxed);
        counters
            .md5_lane_bytes
            .store(hashed.rounds.lane_bytes, Ordering::Relaxed);
        counters
            .md5_room_bytes
            .store(hashed.rounds.room_bytes, Ordering::Relaxed);
        counters
            .md5_single_bytes
            .store(hashed.rounds.single_bytes, Ordering::Relaxed);
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

/// The hasher of a core's volume-counter map, looked up on every block read and write:
/// its keys are the volume UUIDs of the node's own configuration (no one else chooses
/// them, so no flooding to resist), and a multiply-fold of their bytes, 8 at a time,
/// spreads them for a fraction of SipHash's work.
#[derive(Default)]
struct UuidHasher(u64);

impl Hasher for UuidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// One current volume as the caller read it at scrape time.
#[derive(Debug, Default, Clone)]
pub struct VolumeGauges {
    pub uuid: String,
    pub device_id: String,
    /// Free bytes; None when statvfs failed.
    pub free_bytes: Option<u64>,
    /// Every reason a volume can be unhealthy for (`volume::health::Reason`), each with
    /// whether it is the one in force: healthy when none is.
    pub unhealthy: Vec<(&'static str, bool)>,
    /// Drive errors since the volume was opened (`volume::health`).
    pub read_errors: u64,
    pub write_errors: u64,
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
    /// Each current volume.
    pub volumes: Vec<VolumeGauges>,
    /// The request limiter: its bounds (0 active: no limit) and requests waiting now.
    pub max_concurrent_requests: u64,
    pub max_queued_requests: u64,
    pub queued_requests: u64,
    /// The cluster config in force: (sha256, file mtime, load time), Unix seconds.
    pub config: Option<(String, f64, f64)>,
    /// Unix microseconds now, to age the oldest request.
    pub now_micros: u64,
    /// The MD5 kernel's name and its lane count (`md5lanes::Kernel`).
    pub md5_kernel: (&'static str, u64),
}

/// The whole exposition: every family with `# HELP` and `# TYPE`, sums over threads.
pub fn render(registry: &Registry, gauges: &Gauges) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for family in families(registry, gauges) {
        family.write_text(&mut out);
    }
    out
}

/// The same families as `render`, as `/metrics.json` serves them in keepstore: a JSON
/// array of Prometheus MetricFamily messages in protobuf's JSON mapping (what Go's jsonpb
/// writes: lowerCamelCase fields, enum names, 64-bit counts as strings). Both forms are
/// written from one list of `Family`s, so they always carry the same families and values.
pub fn render_json(registry: &Registry, gauges: &Gauges) -> String {
    let families = families(registry, gauges);
    serde_json::Value::Array(families.iter().map(Family::to_json).collect()).to_string()
}

/// Every family of one scrape, in exposition order, summed over threads.
fn families(registry: &Registry, gauges: &Gauges) -> Vec<Family> {
    let threads = registry.snapshot();
    let mut families = request_families(&threads);
    families.extend(volume_families(&threads, gauges));
    families.extend(gauge_families(gauges));
    families.extend(service_families(&threads, gauges));
    families.extend(connection_families(&threads));
    families
}

/// What a family measures: its `# TYPE` word (JSON's `type` is the same in upper case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Summary,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: a count, kept exact, or a measure (seconds, a timestamp) written in
/// Rust's shortest round-trip form, so the text and the JSON carry the same `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Count(u64),
    Real(f64),
}

impl Number {
    fn to_f64(self) -> f64 {
        match self {
            Number::Count(count) => count as f64,
            Number::Real(real) => real,
        }
    }
}

/// The exposition's spelling: infinities are `+Inf` and `-Inf` (text format 0.0.4).
impl std::fmt::Display for Number {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Number::Count(count) => write!(formatter, "{count}"),
            Number::Real(real) if real == f64::INFINITY => formatter.write_str("+Inf"),
            Number::Real(real) if real == f64::NEG_INFINITY => formatter.write_str("-Inf"),
            Number::Real(real) => write!(formatter, "{real}"),
        }
    }
}

/// A series' labels, in the order the text writes them (JSON keeps that order).
type Labels = Vec<(&'static str, String)>;

/// What one series holds, by its family's kind.
#[derive(Debug, Clone, PartialEq)]
enum Measure {
    /// A counter's or a gauge's one sample.
    Single(Number),
    /// `_sum` (seconds) and `_count`.
    Summary { sum: f64, count: u64 },
    /// `_bucket` per upper bound (cumulative; the last bound is +Inf), `_sum`, `_count`.
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

impl Measure {
    fn fits(&self, kind: Kind) -> bool {
        match self {
            Measure::Single(_) => matches!(kind, Kind::Counter | Kind::Gauge),
            Measure::Summary { .. } => kind == Kind::Summary,
            Measure::Histogram { .. } => kind == Kind::Histogram,
        }
    }
}

/// One series of a family.
#[derive(Debug, Clone, PartialEq)]
struct Metric {
    labels: Labels,
    measure: Measure,
}

/// One metric family, built once per scrape and written twice: as exposition text
/// (`write_text`) and as a MetricFamily JSON message (`to_json`).
#[derive(Debug, Clone, PartialEq)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    metrics: Vec<Metric>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            metrics: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, measure: Measure) {
        debug_assert!(measure.fits(self.kind), "{}: {measure:?}", self.name);
        self.metrics.push(Metric { labels, measure });
    }

    fn with(mut self, labels: Labels, measure: Measure) -> Self {
        self.push(labels, measure);
        self
    }

    /// `# HELP`, `# TYPE`, then one line per sample; a histogram's `le` label comes last.
    fn write_text(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} {}", self.kind.name());
        for Metric { labels, measure } in &self.metrics {
            match measure {
                Measure::Single(number) => write_sample(out, name, labels, None, *number),
                Measure::Summary { sum, count } => {
                    write_sample(out, &format!("{name}_sum"), labels, None, Number::Real(*sum));
                    write_sample(out, &format!("{name}_count"), labels, None, Number::Count(*count));
                }
                Measure::Histogram { buckets, sum, count } => {
                    let bucket_name = format!("{name}_bucket");
                    for (bound, cumulative) in buckets {
                        let le = Number::Real(*bound).to_string();
                        write_sample(out, &bucket_name, labels, Some(&le), Number::Count(*cumulative));
                    }
                    write_sample(out, &format!("{name}_sum"), labels, None, Number::Real(*sum));
                    write_sample(out, &format!("{name}_count"), labels, None, Number::Count(*count));
                }
            }
        }
    }

    /// The MetricFamily message: counts as strings, infinite bounds as `"Infinity"`.
    fn to_json(&self) -> serde_json::Value {
        let metrics: Vec<serde_json::Value> = self.metrics.iter().map(|metric| metric.to_json(self.kind)).collect();
        serde_json::json!({
            "name": self.name,
            "help": self.help,
            "type": self.kind.name().to_ascii_uppercase(),
            "metric": metrics,
        })
    }
}

impl Metric {
    fn to_json(&self, kind: Kind) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut fields = Map::new();
        match &self.measure {
            Measure::Single(number) => {
                fields.insert("value".into(), json_number(number.to_f64()));
            }
            Measure::Summary { sum, count } => {
                fields.insert("sampleSum".into(), json_number(*sum));
                fields.insert("sampleCount".into(), json!(count.to_string()));
            }
            Measure::Histogram { buckets, sum, count } => {
                fields.insert("sampleSum".into(), json_number(*sum));
                fields.insert("sampleCount".into(), json!(count.to_string()));
                let buckets: Vec<Value> = buckets
                    .iter()
                    .map(|(bound, cumulative)| {
                        json!({"cumulativeCount": cumulative.to_string(), "upperBound": json_number(*bound)})
                    })
                    .collect();
                if !buckets.is_empty() {
                    fields.insert("bucket".into(), Value::Array(buckets));
                }
            }
        }
        let mut metric = Map::new();
        if !self.labels.is_empty() {
            metric.insert("label".into(), json_labels(&self.labels));
        }
        metric.insert(kind.name().into(), Value::Object(fields));
        Value::Object(metric)
    }
}

/// `name{labels,le="bound"} value`, braces only when there is a label.
fn write_sample(out: &mut String, name: &str, labels: &[(&'static str, String)], le: Option<&str>, value: Number) {
    out.push_str(name);
    let pairs = labels
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .chain(le.map(|bound| ("le", bound)));
    let mut any = false;
    for (key, value) in pairs {
        out.push(if any { ',' } else { '{' });
        let _ = write!(out, "{key}=\"{}\"", label(value));
        any = true;
    }
    if any {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
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

fn json_labels(labels: &[(&'static str, String)]) -> serde_json::Value {
    labels
        .iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect()
}

/// A label value with `\`, `"` and newlines escaped (exposition format rules).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(key, value)| (*key, value.to_string())).collect()
}

fn count(value: u64) -> Measure {
    Measure::Single(Number::Count(value))
}

fn counter(name: &'static str, help: &'static str, value: u64) -> Family {
    Family::new(name, Kind::Counter, help).with(Vec::new(), count(value))
}

fn gauge(name: &'static str, help: &'static str, value: u64) -> Family {
    Family::new(name, Kind::Gauge, help).with(Vec::new(), count(value))
}

fn status_label(status: u16) -> String {
    if status == 0 {
        "other".to_string()
    } else {
        status.to_string()
    }
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// One counter summed over every thread.
fn sum_over(threads: &[Arc<Counters>], pick: impl Fn(&Counters) -> &AtomicU64) -> u64 {
    threads.iter().map(|counters| get(pick(counters))).sum()
}

/// One (method, status) that has answered requests, with its summed duration.
struct RequestTotal {
    method: &'static str,
    code: String,
    count: u64,
    micros: u64,
}

fn request_totals(threads: &[Arc<Counters>]) -> Vec<RequestTotal> {
    let mut totals = Vec::new();
    for (method_index, method) in METHODS.iter().enumerate() {
        for (status_index, status) in STATUSES.iter().enumerate() {
            let count = sum_over(threads, |counters| &counters.requests[method_index][status_index]);
            if count > 0 {
                let micros = sum_over(threads, |counters| {
                    &counters.duration_micros[method_index][status_index]
                });
                let code = status_label(*status);
                totals.push(RequestTotal {
                    method,
                    code,
                    count,
                    micros,
                });
            }
        }
    }
    totals
}

fn request_families(threads: &[Arc<Counters>]) -> Vec<Family> {
    let totals = request_totals(threads);
    vec![
        requests_total(&totals),
        request_duration_summary(&totals),
        request_duration_histogram(threads, &totals),
        counter_by_direction(
            "keepring_http_bytes_total",
            "Request body bytes read (in) and response body bytes written (out).",
            sum_over(threads, |counters| &counters.bytes_in),
            sum_over(threads, |counters| &counters.bytes_out),
        ),
    ]
}

fn requests_total(totals: &[RequestTotal]) -> Family {
    let mut family = Family::new(
        "keepring_requests_total",
        Kind::Counter,
        "Requests answered, by method and status.",
    );
    for total in totals {
        family.push(
            labels([("method", total.method), ("code", &total.code)]),
            count(total.count),
        );
    }
    family
}

/// keepstore's summary: labelled `code` first and the method in lower case, as its own.
fn request_duration_summary(totals: &[RequestTotal]) -> Family {
    let mut family = Family::new(
        "request_duration_seconds",
        Kind::Summary,
        "Time from the request head to the last byte of the response, by code and method.",
    );
    for total in totals {
        let method = total.method.to_ascii_lowercase();
        let measure = Measure::Summary {
            sum: seconds(total.micros),
            count: total.count,
        };
        family.push(labels([("code", &total.code), ("method", &method)]), measure);
    }
    family
}

fn request_duration_histogram(threads: &[Arc<Counters>], totals: &[RequestTotal]) -> Family {
    let mut buckets = Vec::with_capacity(DURATION_BUCKETS_MICROS.len() + 1);
    let mut cumulative = 0u64;
    for bucket in 0..=DURATION_BUCKETS_MICROS.len() {
        cumulative += sum_over(threads, |counters| &counters.duration_buckets[bucket]);
        let bound = DURATION_BUCKETS_MICROS
            .get(bucket)
            .map_or(f64::INFINITY, |micros| seconds(*micros));
        buckets.push((bound, cumulative));
    }
    let total_micros = totals.iter().map(|total| total.micros).sum();
    let measure = Measure::Histogram {
        buckets,
        sum: seconds(total_micros),
        count: cumulative,
    };
    Family::new(
        "keepring_request_duration_seconds",
        Kind::Histogram,
        "Time from the request head to the last byte of the response.",
    )
    .with(Vec::new(), measure)
}

fn counter_by_direction(name: &'static str, help: &'static str, bytes_in: u64, bytes_out: u64) -> Family {
    Family::new(name, Kind::Counter, help)
        .with(labels([("direction", "in")]), count(bytes_in))
        .with(labels([("direction", "out")]), count(bytes_out))
}

/// Per-volume sums, keyed by device id (keepstore's label) and UUID.
#[derive(Default)]
struct VolumeTotals {
    operations: [u64; VOLUME_OPS.len()],
    errors: [u64; VOLUME_ERRORS.len()],
    bytes_in: u64,
    bytes_out: u64,
    scrub: [u64; SCRUB_COUNTS],
    scrub_pass_secs: u64,
}

/// Every current volume (zero until counted) and every volume a thread has counted.
fn volume_totals(threads: &[Arc<Counters>], gauges: &Gauges) -> BTreeMap<(String, String), VolumeTotals> {
    let mut totals: BTreeMap<(String, String), VolumeTotals> = BTreeMap::new();
    for volume in &gauges.volumes {
        totals
            .entry((volume.device_id.clone(), volume.uuid.clone()))
            .or_default();
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
            for (index, counter) in volume.scrub.iter().enumerate() {
                entry.scrub[index] += get(counter);
            }
            // One thread scrubs a volume at a time; a volume moved between threads keeps
            // the latest pass any of them finished (passes only get stored, never reset).
            entry.scrub_pass_secs = entry.scrub_pass_secs.max(get(&volume.scrub_pass_secs));
        }
    }
    totals
}

fn volume_families(threads: &[Arc<Counters>], gauges: &Gauges) -> Vec<Family> {
    let totals = volume_totals(threads, gauges);
    vec![
        per_volume(
            &totals,
            ("arvados_keepstore_volume_operations", "Operations on each volume."),
            ("operation", &VOLUME_OPS.map(|(_, name)| name)),
            |total, index| total.operations[index],
        ),
        per_volume(
            &totals,
            ("arvados_keepstore_volume_errors", "Failed operations on each volume."),
            ("error_type", &VOLUME_ERRORS.map(|(_, name)| name)),
            |total, index| total.errors[index],
        ),
        per_volume(
            &totals,
            (
                "arvados_keepstore_volume_io_bytes",
                "Block bytes written to (in) and read from (out) each volume.",
            ),
            ("direction", &["in", "out"]),
            |total, index| [total.bytes_in, total.bytes_out][index],
        ),
        volume_free(gauges),
        scrub_family(
            &totals,
            ScrubCount::Bytes,
            "keepring_scrub_bytes_total",
            "Bytes the scrubber read and hashed on each volume.",
        ),
        scrub_family(
            &totals,
            ScrubCount::Blocks,
            "keepring_scrub_blocks_total",
            "Stored copies the scrubber checked on each volume.",
        ),
        scrub_family(
            &totals,
            ScrubCount::Corrupt,
            "keepring_scrub_corrupt_blocks_total",
            "Copies the scrubber found failing their MD5 on each volume.",
        ),
        scrub_family(
            &totals,
            ScrubCount::Quarantined,
            "keepring_quarantined_blocks_total",
            "Copies set aside as <hash>.corrupt.<time> on each volume (by the scrubber or a GET).",
        ),
        scrub_pass_seconds(&totals),
    ]
    .into_iter()
    .chain(volume_health(gauges))
    .collect()
}

/// One scrub counter per volume.
fn scrub_family(
    totals: &BTreeMap<(String, String), VolumeTotals>,
    which: ScrubCount,
    name: &'static str,
    help: &'static str,
) -> Family {
    let mut family = Family::new(name, Kind::Counter, help);
    for ((device_id, uuid), total) in totals {
        family.push(
            labels([("device_id", device_id), ("uuid", uuid)]),
            count(total.scrub[which as usize]),
        );
    }
    family
}

/// How long each volume's last full scrub pass took (volumes with none yet are left out).
fn scrub_pass_seconds(totals: &BTreeMap<(String, String), VolumeTotals>) -> Family {
    let mut family = Family::new(
        "keepring_scrub_pass_seconds",
        Kind::Gauge,
        "Duration of the last full scrub pass of each volume.",
    );
    for ((device_id, uuid), total) in totals {
        if total.scrub_pass_secs > 0 {
            family.push(
                labels([("device_id", device_id), ("uuid", uuid)]),
                count(total.scrub_pass_secs),
            );
        }
    }
    family
}

/// A counter with one series per volume and label value: `(label_key, label_values)`.
fn per_volume(
    totals: &BTreeMap<(String, String), VolumeTotals>,
    (name, help): (&'static str, &'static str),
    (label_key, label_values): (&'static str, &[&str]),
    value: impl Fn(&VolumeTotals, usize) -> u64,
) -> Family {
    let mut family = Family::new(name, Kind::Counter, help);
    for ((device_id, uuid), total) in totals {
        for (index, label_value) in label_values.iter().enumerate() {
            let series = labels([("device_id", device_id), ("uuid", uuid), (label_key, label_value)]);
            family.push(series, count(value(total, index)));
        }
    }
    family
}

/// Free space of each current volume whose `statvfs` answered.
fn volume_free(gauges: &Gauges) -> Family {
    let mut family = Family::new(
        "keepring_volume_free_bytes",
        Kind::Gauge,
        "Bytes available to keepring on each volume's filesystem.",
    );
    for volume in &gauges.volumes {
        if let Some(free) = volume.free_bytes {
            let series = labels([("device_id", &volume.device_id), ("uuid", &volume.uuid)]);
            family.push(series, count(free));
        }
    }
    family
}

/// Each current volume's drive health (`volume::health`): healthy or not, why not, and
/// the drive errors counted.
fn volume_health(gauges: &Gauges) -> [Family; 3] {
    let mut healthy = Family::new(
        "keepring_volume_healthy",
        Kind::Gauge,
        "1 while a volume is healthy, 0 while too many drive errors keep it out of the write rotation.",
    );
    let mut unhealthy = Family::new(
        "keepring_volume_unhealthy",
        Kind::Gauge,
        "1 for the reason a volume is unhealthy (read_errors, write_errors), else 0.",
    );
    let mut errors = Family::new(
        "keepring_volume_io_errors_total",
        Kind::Counter,
        "Drive errors (EIO and the like, not a full volume) of reads and writes on each volume since it was opened.",
    );
    for volume in &gauges.volumes {
        let (device_id, uuid) = (volume.device_id.as_str(), volume.uuid.as_str());
        let is_healthy = !volume.unhealthy.iter().any(|(_, in_force)| *in_force);
        healthy.push(
            labels([("device_id", device_id), ("uuid", uuid)]),
            count(u64::from(is_healthy)),
        );
        for (reason, in_force) in &volume.unhealthy {
            let series = labels([("device_id", device_id), ("uuid", uuid), ("reason", reason)]);
            unhealthy.push(series, count(u64::from(*in_force)));
        }
        for (op, value) in [("read", volume.read_errors), ("write", volume.write_errors)] {
            let series = labels([("device_id", device_id), ("uuid", uuid), ("op", op)]);
            errors.push(series, count(value));
        }
    }
    [healthy, unhealthy, errors]
}

/// The buffer budget and the chore queues, read by the caller.
fn gauge_families(gauges: &Gauges) -> Vec<Family> {
    let unit = gauges.buffer_unit_bytes.max(1);
    let table: [(&'static str, &'static str, u64); 10] = [
        (
            "arvados_keepstore_bufferpool_allocated_bytes",
            "Bytes of block buffers held by this process.",
            gauges.buffer_own_bytes,
        ),
        (
            "arvados_keepstore_bufferpool_max_buffers",
            "Block buffer budget, in 64 MiB units (--max-buffers).",
            gauges.buffer_total_bytes / unit,
        ),
        (
            "arvados_keepstore_bufferpool_inuse_buffers",
            "Block buffers in use by this process, in 64 MiB units, rounded up.",
            gauges.buffer_own_bytes.div_ceil(unit),
        ),
        (
            "keepring_bufferpool_inuse_bytes",
            "Bytes of the budget in use by every process sharing it (a restarting peer too).",
            gauges.buffer_in_use_bytes,
        ),
        (
            "keepring_bufferpool_total_bytes",
            "Bytes of the buffer budget.",
            gauges.buffer_total_bytes,
        ),
        (
            "arvados_keepstore_trash_queue_pending_entries",
            "Trash list items waiting.",
            gauges.trash_pending,
        ),
        (
            "arvados_keepstore_trash_queue_inprogress_entries",
            "Trash list items being processed.",
            gauges.trash_in_progress,
        ),
        (
            "arvados_keepstore_pull_queue_pending_entries",
            "Pull list items waiting.",
            gauges.pull_pending,
        ),
        (
            "arvados_keepstore_pull_queue_inprogress_entries",
            "Pull list items being processed.",
            gauges.pull_in_progress,
        ),
        (
            "keepring_draining",
            "1 once the process is draining (SIGTERM), else 0.",
            u64::from(gauges.draining),
        ),
    ];
    table
        .into_iter()
        .map(|(name, help, value)| gauge(name, help, value))
        .collect()
}

/// The Arvados release whose keepstore protocol keepring speaks: `arvados_version_running`
/// carries it, because `arvados-server check` flags a node whose version differs from
/// its own (keepring's own version is in `keepring_build_info`).
pub const ARVADOS_VERSION: &str = "3.2.1";

/// `arvados_config_{source,load}_timestamp_seconds{sha256}`: the config file in force.
fn config_families((sha256, modified, loaded): &(String, f64, f64)) -> [Family; 2] {
    let timestamp = |name, help, unix_seconds: f64| {
        let measure = Measure::Single(Number::Real(unix_seconds));
        Family::new(name, Kind::Gauge, help).with(labels([("sha256", sha256)]), measure)
    };
    [
        timestamp(
            "arvados_config_source_timestamp_seconds",
            "Timestamp of config file when it was loaded.",
            *modified,
        ),
        timestamp(
            "arvados_config_load_timestamp_seconds",
            "Time when config file was loaded.",
            *loaded,
        ),
    ]
}

/// Connections: open now, the limit reached, idle ones closed to admit new clients.
fn connection_families(threads: &[Arc<Counters>]) -> [Family; 3] {
    [
        gauge(
            "keepring_open_connections",
            "Client connections open (counted every second).",
            sum_over(threads, |counters| &counters.open_connections),
        ),
        counter(
            "keepring_connection_limit_reached_total",
            "Times a worker was at --max-connections when a client connected.",
            sum_over(threads, |counters| &counters.connection_limit_hits),
        ),
        counter(
            "keepring_idle_connections_closed_total",
            "Idle keep-alive connections closed (least recently used first) to admit new clients.",
            sum_over(threads, |counters| &counters.idle_connections_closed),
        ),
    ]
}

/// Series every Arvados service exports, with keepstore's names and labels: the request
/// limiter's (`queue="api"`), the age of the oldest request, the config in force, the
/// version.
fn service_families(threads: &[Arc<Counters>], gauges: &Gauges) -> Vec<Family> {
    let mut families = limiter_families(threads, gauges);
    families.extend(gauges.config.as_ref().map(config_families).into_iter().flatten());
    let version_family =
        |name, help, version| Family::new(name, Kind::Gauge, help).with(labels([("version", version)]), count(1));
    families.push(version_family(
        "arvados_version_running",
        "Indicated version is running.",
        ARVADOS_VERSION,
    ));
    families.push(version_family(
        "keepring_build_info",
        "keepring's own version.",
        env!("CARGO_PKG_VERSION"),
    ));
    let (kernel, lanes) = gauges.md5_kernel;
    families.push(
        Family::new(
            "keepring_md5_lanes",
            Kind::Gauge,
            "MD5 streams one kernel call advances at once, by the kernel chosen at start.",
        )
        .with(labels([("kernel", kernel)]), count(lanes)),
    );
    families.extend([
        counter(
            "keepring_md5_batches_total",
            "Batches the per-core MD5 hashers ran: each advances every chunk pending on its core together.",
            sum_over(threads, |counters| &counters.md5_batches),
        ),
        counter(
            "keepring_md5_chunks_total",
            "Chunks hashed in those batches (divided by the batches: streams advanced per batch).",
            sum_over(threads, |counters| &counters.md5_chunks),
        ),
        counter(
            "keepring_md5_bytes_total",
            "Bytes hashed by the per-core MD5 hashers (GET, HEAD and PUT bodies, the scrubber).",
            sum_over(threads, |counters| &counters.md5_bytes),
        ),
        Family::new(
            "keepring_md5_round_bytes_total",
            Kind::Counter,
            "Whole 64-byte blocks the per-core hashers hashed, by path: in SIMD lanes, or one stream at a time (a GET's padding included; a PUT body's or the scrubber's last block and padding are hashed by the request, not counted).",
        )
        .with(
            labels([("path", "lanes")]),
            count(sum_over(threads, |counters| &counters.md5_lane_bytes)),
        )
        .with(
            labels([("path", "single")]),
            count(sum_over(threads, |counters| &counters.md5_single_bytes)),
        ),
        counter(
            "keepring_md5_round_room_bytes_total",
            "Bytes the SIMD rounds had lanes for (each round's width times its length): round bytes in lanes over this is how full the lanes ran.",
            sum_over(threads, |counters| &counters.md5_room_bytes),
        ),
    ]);
    families
}

/// The request limiter's series (`queue="api"`) and the age of the oldest request.
fn limiter_families(threads: &[Arc<Counters>], gauges: &Gauges) -> Vec<Family> {
    let active = sum_over(threads, |counters| &counters.active_requests);
    let oldest = threads
        .iter()
        .map(|thread| get(&thread.oldest_active_micros))
        .filter(|started| *started > 0)
        .min();
    let age_micros = oldest.map_or(0, |started| gauges.now_micros.saturating_sub(started));
    let api_gauge =
        |name, help, value| Family::new(name, Kind::Gauge, help).with(labels([("queue", "api")]), count(value));
    let mut queued = Family::new("arvados_queued_requests", Kind::Gauge, "Number of requests in queue");
    for (priority, value) in [("high", 0), ("low", 0), ("normal", gauges.queued_requests)] {
        queued.push(labels([("priority", priority), ("queue", "api")]), count(value));
    }
    vec![
        api_gauge("arvados_concurrent_requests", "Number of requests in progress", active),
        api_gauge(
            "arvados_max_concurrent_requests",
            "Maximum number of concurrent requests (0: no limit)",
            gauges.max_concurrent_requests,
        ),
        api_gauge(
            "arvados_max_queued_requests",
            "Maximum number of queued requests",
            gauges.max_queued_requests,
        ),
        queued,
        Family::new(
            "arvados_max_active_request_age_seconds",
            Kind::Gauge,
            "Age of oldest active request",
        )
        .with(Vec::new(), Measure::Single(Number::Real(seconds(age_micros)))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md5lanes::Rounds;
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
        let hashed = |batches, chunks, bytes, lane_bytes, room_bytes, single_bytes| HashCounts {
            batches,
            chunks,
            bytes,
            rounds: Rounds {
                lane_bytes,
                room_bytes,
                single_bytes,
            },
        };
        first.set_md5_counts(hashed(3, 10, 4_096, 3_840, 4_096, 320));
        second.set_md5_counts(hashed(2, 2, 100, 0, 0, 128));
        // Totals are set, not added: a second count replaces the first.
        second.set_md5_counts(hashed(4, 5, 200, 128, 512, 128));
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
        assert_eq!(value_of(&text, "keepring_md5_batches_total"), Some(7.0));
        assert_eq!(value_of(&text, "keepring_md5_chunks_total"), Some(15.0));
        assert_eq!(value_of(&text, "keepring_md5_bytes_total"), Some(4_296.0));
        assert_eq!(
            value_of(&text, "keepring_md5_round_bytes_total{path=\"lanes\"}"),
            Some(3_968.0)
        );
        assert_eq!(
            value_of(&text, "keepring_md5_round_bytes_total{path=\"single\"}"),
            Some(448.0)
        );
        assert_eq!(value_of(&text, "keepring_md5_round_room_bytes_total"), Some(4_608.0));
    }

    #[test]
    fn json_keeps_escaped_label_values_counts_and_infinite_bounds() {
        let value = "q\"uo\\te\nnl,}";
        let counter = Family::new("x", Kind::Counter, "A counter.").with(labels([("a", value), ("b", "2")]), count(3));
        let histogram = Family::new("h", Kind::Histogram, "A histogram.").with(
            Vec::new(),
            Measure::Histogram {
                buckets: vec![(0.5, 1), (f64::INFINITY, 4)],
                sum: 2.5,
                count: 4,
            },
        );
        let mut text = String::new();
        counter.write_text(&mut text);
        histogram.write_text(&mut text);
        assert_eq!(
            text,
            format!(
                "# HELP x A counter.\n# TYPE x counter\nx{{a=\"{}\",b=\"2\"}} 3\n\
                 # HELP h A histogram.\n# TYPE h histogram\nh_bucket{{le=\"0.5\"}} 1\nh_bucket{{le=\"+Inf\"}} 4\n\
                 h_sum 2.5\nh_count 4\n",
                label(value)
            )
        );
        assert_eq!(
            counter.to_json(),
            serde_json::json!({
                "name": "x", "help": "A counter.", "type": "COUNTER",
                "metric": [{"label": [{"name": "a", "value": value}, {"name": "b", "value": "2"}], "counter": {"value": 3.0}}]
            })
        );
        assert_eq!(
            histogram.to_json()["metric"][0]["histogram"],
            serde_json::json!({
                "sampleSum": 2.5, "sampleCount": "4",
                "bucket": [{"cumulativeCount": "1", "upperBound": 0.5}, {"cumulativeCount": "4", "upperBound": "Infinity"}]
            })
        );
    }

    /// A scrape with every kind of series: requests of known and unknown methods and
    /// statuses in every duration range, three threads, volumes counted on two threads,
    /// one only configured, one whose `statvfs` failed, label values that need escaping,
    /// a counter past 2^53, the config in force and requests in progress.
    fn realistic_scrape() -> (Registry, Gauges) {
        let registry = Registry::default();
        let (first, second, chore) = (registry.register(), registry.register(), registry.register());
        let requests: [(&str, u16, u64, u64, u64); 12] = [
            ("GET", 200, 0, 67_108_864, 1_234),
            ("GET", 200, 0, 4_096, 87),
            ("GET", 404, 0, 0, 99),
            ("GET", 499, 0, 1_000, 10_000_001),
            ("HEAD", 200, 0, 0, 100),
            ("PUT", 200, 67_108_864, 81, 2_500_001),
            ("PUT", 507, 1_024, 0, 33_333),
            ("DELETE", 200, 0, 0, 777),
            ("TOUCH", 404, 0, 0, 250),
            ("OPTIONS", 200, 0, 0, 1),
            ("BREW", 418, 7, 0, 50),
            ("PUT", 200, 3, 81, 123_456_789),
        ];
        for (index, (method, status, bytes_in, bytes_out, micros)) in requests.into_iter().enumerate() {
            let recorder = [&first, &second][index % 2];
            recorder.request(method, status, bytes_in, bytes_out, micros);
        }
        chore.request("PUT", 200, (1 << 60) + 12_345, 0, 5_000);
        let plain = Volume::unchecked(
            "zzzzz-nyw5e-000000000000000",
            Path::new("/data/a"),
            &VolumeOptions::default(),
        );
        let odd = Volume::unchecked(
            "zzzzz-nyw5e-111111111111111",
            Path::new("/q\"uo\\te\nnl,}"),
            &VolumeOptions::default(),
        );
        for recorder in [&first, &second, &chore] {
            let counters = recorder.volume(&plain);
            counters.operation(VolumeOp::Read);
            counters.operation(VolumeOp::Write);
            counters.read(4_096);
            counters.wrote(81);
        }
        second.volume(&odd).operation(VolumeOp::Trash);
        second.volume(&odd).error(VolumeErrorKind::Io);
        chore.volume(&odd).error(VolumeErrorKind::Checksum);
        let now_micros = 1_765_000_000_000_000;
        first.set_activity(3, now_micros - 1_500_000);
        second.set_activity(1, now_micros - 250);
        first.set_open_connections(7);
        second.set_open_connections(2);
        second.connection_limit_reached(3);
        (registry, realistic_gauges(&plain, &odd, now_micros))
    }

    /// Gauges of a node with `plain` and `odd` counted, a third volume configured.
    fn realistic_gauges(plain: &Volume, odd: &Volume, now_micros: u64) -> Gauges {
        Gauges {
            buffer_unit_bytes: 1 << 26,
            buffer_total_bytes: 8 << 26,
            buffer_in_use_bytes: 3 << 26,
            buffer_own_bytes: (1 << 26) + 1,
            trash_pending: 12,
            trash_in_progress: 1,
            pull_pending: 4,
            pull_in_progress: 2,
            draining: true,
            volumes: vec![
                VolumeGauges {
                    uuid: plain.uuid.clone(),
                    device_id: plain.device_id.clone(),
                    free_bytes: Some(123_456_789_012),
                    unhealthy: vec![("read_errors", false), ("write_errors", false)],
                    read_errors: 0,
                    write_errors: 2,
                },
                VolumeGauges {
                    uuid: odd.uuid.clone(),
                    device_id: odd.device_id.clone(),
                    free_bytes: None,
                    unhealthy: vec![("read_errors", true), ("write_errors", false)],
                    read_errors: 9,
                    write_errors: 0,
                },
                VolumeGauges {
                    uuid: "zzzzz-nyw5e-222222222222222".into(),
                    device_id: "/data/c".into(),
                    free_bytes: Some(0),
                    ..VolumeGauges::default()
                },
            ],
            max_concurrent_requests: 64,
            max_queued_requests: 128,
            queued_requests: 5,
            config: Some(("a\"b\\sha".into(), 1_700_000_000.123_456, 1_700_000_100.5)),
            now_micros,
            md5_kernel: ("avx512", 16),
        }
    }

    /// One sample as a scraper sees it: the series name, its labels without `le`, the
    /// histogram bound, the value.
    type Seen = (String, Vec<(String, String)>, Option<f64>, f64);

    /// `k="v",k2="v2"` with the exposition escapes (`\\`, `\"`, `\n`) undone.
    fn parse_labels(text: &str) -> Vec<(String, String)> {
        let mut labels = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("key=\"");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("a closing quote") {
                    (index, '"') => break index,
                    (_, '\\') => match chars.next().expect("an escaped character").1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, other) => value.push(other),
                }
            };
            labels.push((key.to_string(), value));
            rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
        }
        labels
    }

    fn parse_float(text: &str) -> f64 {
        match text {
            "+Inf" => f64::INFINITY,
            other => other.parse().unwrap_or_else(|_| panic!("a number: {other}")),
        }
    }

    /// The text's `# HELP`/`# TYPE` lines and samples, in order, as a scraper reads them.
    fn read_text(text: &str) -> (Vec<String>, Vec<Seen>) {
        let mut headers = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                headers.push(line.to_string());
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let (name, mut labels) = match series.split_once('{') {
                None => (series, Vec::new()),
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
            };
            let le = labels.iter().position(|(key, _)| key == "le");
            let bound = le.map(|index| parse_float(&labels.remove(index).1));
            samples.push((name.to_string(), labels, bound, parse_float(value)));
        }
        (headers, samples)
    }

    fn json_float(value: &serde_json::Value) -> f64 {
        match value {
            serde_json::Value::String(text) if text == "Infinity" => f64::INFINITY,
            serde_json::Value::String(count) => count.parse().expect("a count"),
            number => number.as_f64().expect("a number"),
        }
    }

    /// The same, read from the MetricFamily JSON (a summary's and a histogram's fields
    /// become the `_sum`, `_count` and `_bucket` series the text shows).
    fn read_json(json: &str) -> (Vec<String>, Vec<Seen>) {
        let families: serde_json::Value = serde_json::from_str(json).expect("JSON");
        let mut headers = Vec::new();
        let mut samples = Vec::new();
        for family in families.as_array().expect("an array") {
            let (name, kind) = (
                family["name"].as_str().expect("name"),
                family["type"].as_str().expect("type"),
            );
            let kind = kind.to_ascii_lowercase();
            headers.push(format!("# HELP {name} {}", family["help"].as_str().expect("help")));
            headers.push(format!("# TYPE {name} {kind}"));
            for metric in family["metric"].as_array().expect("metrics") {
                let labels: Vec<(String, String)> = metric["label"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .map(|label| {
                        (
                            label["name"].as_str().expect("name").into(),
                            label["value"].as_str().expect("value").into(),
                        )
                    })
                    .collect();
                let fields = &metric[kind.as_str()];
                let mut seen = |suffix: &str, bound: Option<f64>, value: &serde_json::Value| {
                    samples.push((format!("{name}{suffix}"), labels.clone(), bound, json_float(value)));
                };
                if matches!(kind.as_str(), "counter" | "gauge") {
                    seen("", None, &fields["value"]);
                    continue;
                }
                for bucket in fields["bucket"].as_array().map_or(&[][..], Vec::as_slice) {
                    seen(
                        "_bucket",
                        Some(json_float(&bucket["upperBound"])),
                        &bucket["cumulativeCount"],
                    );
                }
                seen("_sum", None, &fields["sampleSum"]);
                seen("_count", None, &fields["sampleCount"]);
            }
        }
        (headers, samples)
    }

    #[test]
    fn text_and_json_carry_the_same_families_and_samples() {
        let (registry, gauges) = realistic_scrape();
        let text = render(&registry, &gauges);
        let (text_headers, text_samples) = read_text(&text);
        let (json_headers, json_samples) = read_json(&render_json(&registry, &gauges));
        assert_eq!(text_headers, json_headers);
        assert_eq!(text_samples.len(), json_samples.len());
        for (from_text, from_json) in text_samples.iter().zip(&json_samples) {
            assert_eq!(from_text, from_json);
        }
        let families = families(&registry, &gauges);
        assert!(families.iter().any(|family| family.kind == Kind::Summary));
        assert!(families.iter().any(|family| family.kind == Kind::Histogram));
        assert!(text.contains("keepring_requests_total{method=\"other\",code=\"other\"} 1\n"));
        assert!(text.contains("arvados_config_load_timestamp_seconds{sha256=\"a\\\"b\\\\sha\"} 1700000100.5\n"));
        assert!(text.contains("keepring_http_bytes_total{direction=\"in\"} 1152921504673969219\n"));
    }

    #[test]
    fn each_volume_says_whether_it_is_healthy_why_not_and_its_drive_errors() {
        let (registry, gauges) = realistic_scrape();
        let text = render(&registry, &gauges);
        let plain = "device_id=\"/data/a\",uuid=\"zzzzz-nyw5e-000000000000000\"";
        let third = "device_id=\"/data/c\",uuid=\"zzzzz-nyw5e-222222222222222\"";
        for (series, value) in [
            (format!("keepring_volume_healthy{{{plain}}}"), 1.0),
            (
                format!("keepring_volume_unhealthy{{{plain},reason=\"write_errors\"}}"),
                0.0,
            ),
            (format!("keepring_volume_io_errors_total{{{plain},op=\"write\"}}"), 2.0),
            (format!("keepring_volume_io_errors_total{{{plain},op=\"read\"}}"), 0.0),
            (format!("keepring_volume_healthy{{{third}}}"), 1.0),
        ] {
            assert_eq!(value_of(&text, &series), Some(value), "{series}\n{text}");
        }
        let odd = gauges.volumes[1].uuid.as_str();
        let odd_line = |name: &str, tail: &str| {
            text.lines()
                .find(|line| line.starts_with(name) && line.contains(odd) && line.contains(tail))
                .map(|line| line.rsplit(' ').next().unwrap_or_default().to_string())
        };
        assert_eq!(odd_line("keepring_volume_healthy{", "}").as_deref(), Some("0"));
        assert_eq!(
            odd_line("keepring_volume_unhealthy{", "reason=\"read_errors\"").as_deref(),
            Some("1")
        );
        assert_eq!(
            odd_line("keepring_volume_io_errors_total{", "op=\"read\"").as_deref(),
            Some("9")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
