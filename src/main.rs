//! keepring: args → config → supervisor; a start-up error is one line and exit code 2.

use std::process::ExitCode;

use clap::Parser;

use keepring::config::{Cli, Config};
use keepring::logging::{self, StaticFields};
use keepring::supervisor;

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
