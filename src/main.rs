//! keepring: args → config → supervisor; a start-up error is one line and exit code 2.

use std::process::ExitCode;

use clap::Parser;

use keepring::config::{Cli, Config};
use keepring::logging::{self, StaticFields};
use keepring::supervisor;

/// mimalloc instead of glibc's malloc. A request still allocates a few small objects
/// (boxed futures, head buffers, ids); under glibc's bins (`malloc_consolidate` on the
/// way) they were 9.9% of a 4 KiB GET's CPU samples, under mimalloc 3.5-4.9% (perf, one
/// worker, 64 connections). Only the binary: tests and fuzz targets keep the system
/// allocator. Freed memory is given back at once (`return_freed_memory_at_once`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (mimalloc.h, `mi_option_e`): milliseconds before
/// freed memory is purged; its default reads 1000 in the build Cargo.lock pins (the header
/// says 10).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_PURGE_DELAY_DEFAULTS: [std::ffi::c_long; 2] = [10, 1000];

/// By default mimalloc purges freed memory only when the thread that freed it allocates
/// again: after a burst of 64 MiB PUTs an idle node kept ~480 MB resident (glibc: back to
/// 14 MB). Purged at once instead, a big body buffer is unmapped on free as under glibc;
/// the buffer budget's spares (`bufpool`) are what keeps a few mapped for the next PUTs.
/// The option is set only if it reads as one of its defaults, so a mimalloc whose option
/// list moved is left alone rather than mis-set (and an operator's MIMALLOC_PURGE_DELAY
/// wins).
fn return_freed_memory_at_once() {
    // SAFETY: plain getters and setters of mimalloc's option table, called once at start
    // before any thread but this one exists.
    unsafe {
        if MI_PURGE_DELAY_DEFAULTS.contains(&libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

/// keepstore's Go flags take one dash (`-config FILE`, `-config=FILE`, `-version`); a unit
/// or script written for keepstore passes them so.
fn keepstore_style_args() -> Vec<std::ffi::OsString> {
    std::env::args_os()
        .map(|arg| match arg.to_str() {
            Some("-config") => "--config".into(),
            Some("-version") => "--version".into(),
            Some(text) if text.starts_with("-config=") => format!("-{text}").into(),
            _ => arg,
        })
        .collect()
}

fn main() -> ExitCode {
    return_freed_memory_at_once();
    let cli = match Cli::try_parse_from(keepstore_style_args()) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line, not clap's usage block: operators and scripts read the reason.
            let rendered = error.to_string();
            let reason = rendered
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ");
            eprintln!("keepring: {reason} (see --help)");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_cli(cli.clone()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("keepring: {message}");
            return ExitCode::from(2);
        }
    };
    let static_fields = StaticFields {
        pid: std::process::id(),
        cluster_id: config.cluster_id.clone(),
    };
    let guard = logging::init(config.log_format, config.log_level, static_fields);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let result = supervisor::run(cli, config);
    // Flush the log writer before leaving (process::exit would drop queued lines).
    drop(guard);
    match result {
        Ok(code) => {
            // Chore, watcher and signal threads are still running: leave without the C
            // library's atexit handlers (OpenSSL's cleanup among them), which are not safe
            // to run beside live threads. Everything worth keeping is on disk or flushed.
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process at once; no Rust state is observed after it.
            unsafe { libc::_exit(code as i32) }
        }
        Err(supervisor::StartError { message, code }) => {
            eprintln!("keepring: {message}");
            ExitCode::from(code)
        }
    }
}
