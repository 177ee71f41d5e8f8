//! keepring: args → config → supervisor; a start-up error is one line and exit code 2.

use std::process::ExitCode;

use clap::Parser;

use keepring::config::{Cli, Config, LogFormat};
use keepring::lifecycle::supervisor;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("keepring: {message}");
            return ExitCode::from(2);
        }
    };
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_writer(writer).with_max_level(config.log_level).with_ansi(false);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let result = supervisor::run(config);
    if let Err(supervisor::StartError(message)) = &result {
        tracing::error!("{message}");
    }
    // Flush the log writer before leaving (process::exit would drop queued lines).
    drop(guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(supervisor::StartError(message)) => {
            eprintln!("keepring: {message}");
            ExitCode::from(2)
        }
    }
}
