//! The main thread: open volumes, obtain listening sockets (systemd, a running keepring's
//! hand-over, or fresh binds), start one worker per core, announce readiness (log line,
//! systemd `READY=1`, SIGTERM to `--term-pid`), then turn signals into a drain:
//!
//! - SIGTERM / SIGINT: stop accepting, let every request finish (keep-alive connections
//!   get `Connection: close`), exit 0; after `--drain-timeout-secs` cut what is left, log
//!   it and exit 3. A second SIGTERM does not shorten the drain.
//! - SIGQUIT: exit at once (code 131).
//! - SIGUSR1: rescan volumes now. SIGHUP: re-read the config file and key/token files,
//!   apply keys, tokens, volume changes and the trash settings, and reload an HTTPS
//!   listener's certificate and key (also hourly, as keepstore); a broken config or a bad
//!   new pair is logged and the running one kept.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};

use crate::api::context::{ScrubSettings, Services};
use crate::api::limiter::RequestLimiter;
use crate::blocking;
use crate::bufpool::BufferBudget;
use crate::chores::{ChoreContext, ChoreSettings, Chores};
use crate::config::{Cli, Config};
use crate::lifecycle::handover::{self, ControlSocket};
use crate::lifecycle::listeners::{self, Source};
use crate::lifecycle::Phase;
use crate::limits::{
    BUFFER_UNIT_BYTES, CONNECTIONS_PER_WORKER_DEFAULT_MAX, HELPER_QUEUE_JOBS_MAX, HELPER_THREADS,
    OPEN_FILES_PER_CONNECTION_SHARE, SPARE_BODY_IDLE_SECS, TLS_RELOAD_INTERVAL_SECS, WORKERS_READY_TIMEOUT_MS,
};
use crate::md5lanes::Kernel;
use crate::node::{Node, NodeState};
use crate::server::runtime::{self, WorkerExit, WorkerStart};
use crate::signature::SigningKey;
use crate::tls::ServerTls;
use crate::volumes::watcher::{self, WatchEvent, WatcherHandle};
use crate::volumes::VolumeSet;

/// Exit code when the drain timed out and cut requests.
pub const EXIT_DRAIN_CUT: u8 = 3;
/// Exit code when a worker thread panicked.
pub const EXIT_WORKER_PANIC: u8 = 4;
/// Exit code after SIGQUIT (128 + 3, as a shell reports a signal death).
pub const EXIT_QUIT: u8 = 131;

/// A start-up failure: one line and an exit code. 2 is the operator's to fix (bad
/// settings: the systemd unit's `RestartPreventExitStatus=2` stops a restart loop); 1 may
/// pass by itself (the port still held by a process on its way out), so systemd retries.
pub struct StartError {
    pub message: String,
    pub code: u8,
}

/// Exit code of a start-up failure worth retrying.
pub const EXIT_START_RETRY: u8 = 1;
/// Exit code of a configuration refused at start.
pub const EXIT_CONFIG: u8 = 2;

impl StartError {
    fn config(message: String) -> Self {
        StartError {
            message,
            code: EXIT_CONFIG,
        }
    }
}

fn log_phase(phase: Phase) {
    tracing::info!(phase = phase.name(), "lifecycle");
}

/// Everything obtained before the workers start.
struct Sockets {
    address: std::net::SocketAddr,
    per_worker: Vec<Vec<std::net::TcpListener>>,
    source: Source,
    budget_memory: Option<OwnedFd>,
}

fn obtain_sockets(config: &Config, control_path: &Option<PathBuf>) -> Result<Sockets, StartError> {
    let fail = |what: &str, error: std::io::Error| StartError::config(format!("{what}: {error}"));
    let mut inherited = listeners::from_systemd(config.listen).map_err(|error| fail("LISTEN_FDS", error))?;
    let mut source = Source::Systemd;
    let mut budget_memory = None;
    if inherited.is_empty() {
        source = Source::Bound;
        if let Some(path) = control_path {
            match handover::request(path) {
                Ok(Some(mut handover)) => {
                    inherited = listeners::from_handover(&mut handover, config.listen)
                        .map_err(|error| fail("taking over listeners", error))?;
                    budget_memory = handover.budget.take();
                    source = Source::Handover;
                    tracing::info!(path = %path.display(), listeners = inherited.len(), "took over listening sockets");
                }
                Ok(None) => {}
                // A broken predecessor must not stop a replacement: bind beside it instead.
                Err(error) => tracing::warn!(path = %path.display(), error = %error, "hand-over failed; binding fresh"),
            }
        }
    }
    let (address, per_worker) =
        listeners::assign(config.listen, inherited, config.workers).map_err(|error| StartError {
            message: format!("cannot listen on {}: {error}", config.listen),
            code: EXIT_START_RETRY,
        })?;
    Ok(Sockets {
        address,
        per_worker,
        source,
        budget_memory,
    })
}

fn open_volumes(config: &Config) -> Result<VolumeSet, StartError> {
    // `--volume` directories are created if missing; configured ones (with a UUID) must
    // exist, or an unmounted drive would be replaced by a directory on the root disk.
    for (dir, options) in config.volume_sources.fixed_directories() {
        if options.uuid.is_none() {
            std::fs::create_dir_all(dir)
                .map_err(|error| StartError::config(format!("cannot use volume {}: {error}", dir.display())))?;
        }
    }
    watcher::initial_scan(&config.volume_sources).map_err(StartError::config)
}

/// Keys and tokens of a config, with the volume set they go with.
fn node_state(config: &Config, volumes: VolumeSet) -> NodeState {
    NodeState {
        volumes,
        signing_key: config
            .signing_key
            .as_deref()
            .map(|key| SigningKey::new(key, config.blob_signing_ttl_secs)),
        enforce_signatures: config.enforce_signatures,
        system_root_token: config.system_root_token.clone(),
        management_token: config.management_token.clone(),
        config_source: config.config_source.clone().map(Arc::new),
    }
}

/// Run until drained; returns the process exit code.
pub fn run(cli: Cli, config: Config) -> Result<u8, StartError> {
    // Chosen once, before anything listens: a forced kernel this CPU lacks refuses to start.
    let md5_kernel = Kernel::detect().map_err(|error| StartError::config(error.to_string()))?;
    // Before anything listens: an https listener without a usable pair refuses to start.
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            ServerTls::load(&files.certificate, &files.key).map_err(StartError::config)?,
        )),
        None => None,
    };
    let volumes = open_volumes(&config)?;
    log_phase(Phase::Starting);
    // Port 0 is a fresh ephemeral port: nobody to take over from, and the control socket
    // is named after the port actually bound.
    let wants_handover = config.handover && config.listen.port() != 0;
    let requested_path = config
        .control_socket
        .clone()
        .or_else(|| Some(handover::default_path(config.listen)));
    let mut sockets = obtain_sockets(&config, &if wants_handover { requested_path.clone() } else { None })?;
    let budget = budget_of(&config, sockets.budget_memory.take())?;
    let (watcher_handle, watcher_inbox) =
        watcher::channel().map_err(|error| StartError::config(format!("cannot set up the volume watcher: {error}")))?;
    let helpers = blocking::Pool::start(HELPER_THREADS, HELPER_QUEUE_JOBS_MAX)
        .map_err(|error| StartError::config(format!("cannot start the helper threads: {error}")))?;
    let services = Arc::new(Services {
        md5_kernel,
        ..services_of(&config, volumes, budget, watcher_handle.clone(), helpers)
    });
    start_background(&services, &config, watcher_inbox)?;
    // Outside the log macro: it times the kernels once (under a millisecond), which must
    // happen here, before the workers hash, whatever the log level.
    let md5_rounds = md5_kernel.describe_rounds();
    tracing::info!(
        kernel = md5_kernel.name(),
        lanes = md5_kernel.lanes(),
        rounds = %md5_rounds,
        "MD5 hashing in SIMD lanes"
    );
    // Signals are handled from here on (a TERM during start-up then drains instead of killing).
    let signals =
        signal_events().map_err(|error| StartError::config(format!("cannot install signal handlers: {error}")))?;
    let offer =
        offer_of(&sockets).map_err(|error| StartError::config(format!("cannot duplicate listeners: {error}")))?;
    let address = sockets.address;
    let source = sockets.source;
    let connections_max = connections_per_worker(&config);
    let workers = start_workers(
        &services,
        &config,
        std::mem::take(&mut sockets.per_worker),
        connections_max,
        &tls,
    )?;
    let control_path = config
        .control_socket
        .clone()
        .unwrap_or_else(|| handover::default_path(address));
    let control = start_control_socket(&control_path, offer, &services.budget)?;
    tracing::info!(
        workers = config.workers,
        max_connections = connections_max * config.workers,
        tls = tls.is_some(),
        source = ?source,
        control_socket = %control_path.display(),
        "listening on {address}"
    );
    announce_ready(config.term_pid);
    let reload = Reload {
        cli,
        running: config,
        watcher: watcher_handle,
        tls,
    };
    let code = serve_until_drained(signals, workers, control, &services, reload);
    tracing::info!(code, "exiting");
    Ok(code)
}

/// Each worker's share of `--max-connections`, or of the default: 4096 per worker and at
/// most half the open-files limit, raised first to its hard limit.
fn connections_per_worker(config: &Config) -> usize {
    let open_files = raise_open_files_limit();
    let workers = config.workers.max(1) as u64;
    let total = config.max_connections.unwrap_or_else(|| {
        let by_files = open_files / OPEN_FILES_PER_CONNECTION_SHARE;
        (CONNECTIONS_PER_WORKER_DEFAULT_MAX as u64 * workers)
            .min(by_files)
            .max(workers)
    });
    total.div_ceil(workers) as usize
}

/// Raise the soft RLIMIT_NOFILE to the hard one; returns the soft limit now in force.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer for getrlimit and a valid in-pointer below.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open-files limit");
    }
    limit.rlim_cur
}

fn budget_of(config: &Config, shared: Option<OwnedFd>) -> Result<Arc<BufferBudget>, StartError> {
    let total_bytes = config.max_buffers * BUFFER_UNIT_BYTES;
    match shared {
        Some(memory) => BufferBudget::attach(memory, total_bytes),
        None => BufferBudget::new(total_bytes),
    }
    .map_err(|error| StartError::config(format!("cannot set up the buffer budget: {error}")))
}

/// What every core shares, from the configuration.
fn services_of(
    config: &Config,
    volumes: VolumeSet,
    budget: Arc<BufferBudget>,
    watcher: WatcherHandle,
    helpers: blocking::Pool,
) -> Services {
    let node = Arc::new(Node::new(node_state(config, volumes)));
    Services {
        chores: Arc::new(Chores::new(ChoreSettings::from_config(config))),
        watcher: Some(watcher),
        limiter: RequestLimiter::new(config.max_concurrent_requests, config.max_queued_requests),
        verified_cache_entries: config.verified_cache_entries,
        scrub: ScrubSettings {
            interval_secs: config.scrub_interval_secs,
            rate_bytes_per_sec: config.scrub_rate_mb.saturating_mul(1_000_000),
            workers: config.workers,
        },
        ..Services::new(node, budget, helpers)
    }
}

/// The chore threads and the volume watcher, each given what it needs and no more.
fn start_background(services: &Arc<Services>, config: &Config, inbox: watcher::WatcherInbox) -> Result<(), StartError> {
    let context = Arc::new(ChoreContext {
        state: services.node.clone(),
        chores: services.chores.clone(),
        registry: services.registry.clone(),
        budget: services.budget.clone(),
        predecessor_pid: config.term_pid,
    });
    crate::chores::start(&context)
        .map_err(|error| StartError::config(format!("cannot start the chore threads: {error}")))?;
    watcher::spawn(services.node.clone(), config.volume_sources.clone(), inbox)
        .map_err(|error| StartError::config(format!("cannot start the volume watcher: {error}")))?;
    Ok(())
}

/// One thread per worker, each with its listeners; returns once every one accepts.
fn start_workers(
    services: &Arc<Services>,
    config: &Config,
    per_worker: Vec<Vec<std::net::TcpListener>>,
    connections_max: usize,
    tls: &Option<Arc<ServerTls>>,
) -> Result<Vec<std::thread::JoinHandle<WorkerExit>>, StartError> {
    let (ready_sender, ready_receiver) = crossbeam_channel::bounded(config.workers);
    let mut workers = Vec::new();
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let start = WorkerStart {
            id,
            services: services.clone(),
            listeners,
            ready: ready_sender.clone(),
            drain_timeout: Duration::from_secs(config.drain_timeout_secs),
            connections_max,
            tls: tls.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("keepring-worker-{id}"))
            .spawn(move || runtime::run(start))
            .map_err(|error| StartError::config(format!("cannot start worker {id}: {error}")))?;
        workers.push(handle);
    }
    for _ in 0..workers.len() {
        ready_receiver
            .recv_timeout(Duration::from_millis(WORKERS_READY_TIMEOUT_MS))
            .map_err(|_| StartError::config("a worker did not start (io_uring unavailable?)".into()))?;
    }
    Ok(workers)
}

fn start_control_socket(
    path: &std::path::Path,
    offer: Vec<(String, OwnedFd)>,
    budget: &BufferBudget,
) -> Result<Option<ControlSocket>, StartError> {
    let memory = budget
        .memory()
        .map_err(|error| StartError::config(format!("cannot share the budget: {error}")))?;
    match ControlSocket::start(path, offer, memory) {
        Ok(control) => Ok(Some(control)),
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "no control socket: restarts will not hand over");
            Ok(None)
        }
    }
}

/// Ready: log it, tell systemd (MAINPID lets it follow a replacement started by
/// ExecReload), and TERM the process this one replaces.
fn announce_ready(term_pid: Option<u32>) {
    log_phase(Phase::Ready);
    sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    if let Some(pid) = term_pid {
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0 {
            tracing::info!(pid, "sent SIGTERM to the process being replaced");
        } else {
            tracing::warn!(pid, error = %std::io::Error::last_os_error(), "could not signal --term-pid");
        }
    }
}

/// Duplicates of every listening socket, labelled with its address, for the hand-over.
fn offer_of(sockets: &Sockets) -> std::io::Result<Vec<(String, OwnedFd)>> {
    let mut offer = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for listener in sockets.per_worker.iter().flatten() {
        // Identify a socket by its inode: when every worker shares one, offer it once.
        let inode = std::fs::File::from(listener.as_fd().try_clone_to_owned()?).metadata()?;
        if seen.insert(std::os::unix::fs::MetadataExt::ino(&inode)) {
            offer.push((sockets.address.to_string(), listener.as_fd().try_clone_to_owned()?));
        }
    }
    Ok(offer)
}

enum Event {
    Signal(i32),
    WorkersDone(Vec<WorkerExit>),
    /// Time for the hourly re-read of the TLS certificate and key.
    TlsReload,
    /// Time to free spare PUT buffers no PUT used since the last tick.
    SpareCheck,
}

/// Signals become events on one channel (signal-hook's iterator on its own thread).
fn signal_events() -> std::io::Result<crossbeam_channel::Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1])?;
    let (sender, receiver) = crossbeam_channel::bounded(16);
    std::thread::Builder::new()
        .name("keepring-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(signal).is_err() {
                    break;
                }
            }
        })?;
    Ok(receiver)
}

fn serve_until_drained(
    signals: crossbeam_channel::Receiver<i32>,
    workers: Vec<std::thread::JoinHandle<WorkerExit>>,
    mut control: Option<ControlSocket>,
    services: &Services,
    mut reload: Reload,
) -> u8 {
    let (done_sender, done_receiver) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("keepring-join".into())
        .spawn(move || {
            let exits = workers
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or(WorkerExit {
                        cut_connections: 0,
                        panicked: true,
                    })
                })
                .collect();
            let _ = done_sender.send(exits);
        })
        .ok();
    let tls_ticks = match reload.tls {
        Some(_) => crossbeam_channel::tick(Duration::from_secs(TLS_RELOAD_INTERVAL_SECS)),
        None => crossbeam_channel::never(),
    };
    let spare_checks = crossbeam_channel::tick(Duration::from_secs(SPARE_BODY_IDLE_SECS));
    loop {
        let event = crossbeam_channel::select! {
            recv(signals) -> signal => Event::Signal(signal.unwrap_or(SIGTERM)),
            recv(done_receiver) -> exits => Event::WorkersDone(exits.unwrap_or_default()),
            recv(tls_ticks) -> _ => Event::TlsReload,
            recv(spare_checks) -> _ => Event::SpareCheck,
        };
        match event {
            Event::Signal(SIGQUIT) => {
                tracing::warn!("SIGQUIT: exiting at once");
                return EXIT_QUIT;
            }
            Event::Signal(signal @ (SIGTERM | SIGINT)) if !services.drain.is_draining() => {
                tracing::info!(signal, "draining");
                log_phase(Phase::Draining);
                // No STOPPING=1: under the unit's NotifyAccess=all systemd would take it from
                // a process its successor replaced as a stop of the whole service (and kill
                // the successor at TimeoutStopSec). A stop systemd asked for needs no notice.
                services.budget.release_spare();
                // Our copies of the listeners close now: a successor holds its own, and a
                // plain stop must not leave connections queued where nobody accepts.
                if let Some(control) = control.take() {
                    control.stop();
                }
                services.drain.begin();
            }
            Event::Signal(SIGUSR1) => reload.watcher.nudge(WatchEvent::Rescan("SIGUSR1")),
            Event::Signal(SIGHUP) => reload.apply(&services.node, &services.chores),
            Event::TlsReload => reload.reload_tls(None, "hourly"),
            Event::SpareCheck => services.budget.release_idle_spares(),
            Event::Signal(signal) => tracing::info!(signal, "signal ignored"),
            Event::WorkersDone(exits) => {
                let cut: usize = exits.iter().map(|exit| exit.cut_connections).sum();
                log_phase(Phase::Drained);
                if exits.iter().any(|exit| exit.panicked) {
                    tracing::error!("a worker thread panicked");
                    return EXIT_WORKER_PANIC;
                }
                if cut > 0 {
                    tracing::error!(cut_connections = cut, "drain timed out; connections were cut");
                    return EXIT_DRAIN_CUT;
                }
                return 0;
            }
        }
    }
}

/// What SIGHUP needs: the command line to re-read and the configuration running now.
struct Reload {
    cli: Cli,
    running: Config,
    watcher: WatcherHandle,
    /// The HTTPS listener's certificate in force, which the workers share.
    tls: Option<Arc<ServerTls>>,
}

impl Reload {
    /// Re-read flags' files and the config file; apply keys, tokens, volume sources and the
    /// trash settings. A config that does not parse is logged and the running one kept.
    fn apply(&mut self, node: &Node, chores: &Chores) {
        let environment = crate::config::Environment::from_process();
        let config = match Config::resolve(self.cli.clone(), &environment, Some(&self.running)) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(error = %error, "SIGHUP: configuration not reloaded; keeping the running one");
                return;
            }
        };
        let limits = |config: &Config| (config.max_concurrent_requests, config.max_queued_requests);
        if config.listen != self.running.listen
            || config.max_buffers != self.running.max_buffers
            || limits(&config) != limits(&self.running)
        {
            tracing::warn!(
                "SIGHUP: listen address, buffer budget and request limit changes need a restart (--term-pid)"
            );
        }
        self.reload_tls(Some(&config), "SIGHUP");
        node.update(|current| node_state(&config, current.volumes.clone()));
        self.watcher.nudge(WatchEvent::Sources(config.volume_sources.clone()));
        let trash = chores.reload(ChoreSettings::from_config(&config));
        if trash.workers_differ {
            tracing::warn!(
                "SIGHUP: trash, delete and pull worker count changes (BlobTrashConcurrency, \
                 BlobDeleteConcurrency, BlobReplicateConcurrency) need a restart (--term-pid)"
            );
        }
        tracing::info!(
            blob_trash = trash.in_force.blob_trash,
            trash_lifetime_secs = trash.in_force.trash_lifetime_secs,
            trash_check_interval_secs = trash.in_force.trash_check_interval_secs,
            empties_trash = trash.in_force.empties_trash(),
            "SIGHUP: trash settings in force"
        );
        tracing::info!(
            signing = config.signing_key.is_some(),
            fixed_volumes = config.volume_sources.fixed.len(),
            "SIGHUP: configuration reloaded"
        );
        self.running = config;
    }

    /// Re-read the certificate and key `config` names (None: the running config's): new
    /// handshakes use the new pair; a pair that does not load is logged and the old one
    /// stays. HTTP and HTTPS trade places only by a restart.
    fn reload_tls(&self, config: Option<&Config>, reason: &str) {
        let files = config.unwrap_or(&self.running).tls.as_ref();
        match (&self.tls, files) {
            (Some(server_tls), Some(files)) => match server_tls.reload(&files.certificate, &files.key) {
                Ok(()) => tracing::info!(reason, certificate = %files.certificate.display(), "TLS certificate loaded"),
                Err(error) => {
                    tracing::error!(reason, error = %error, "TLS certificate not reloaded; keeping the running one")
                }
            },
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                tracing::warn!("SIGHUP: switching between HTTP and HTTPS needs a restart (--term-pid)")
            }
        }
    }
}

/// Tell systemd (Type=notify) about a state change; a datagram to `$NOTIFY_SOCKET`.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address));
    if let Err(error) = sent {
        tracing::warn!(error = %error, state, "sd_notify failed");
    }
}
