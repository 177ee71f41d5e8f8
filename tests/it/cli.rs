//! Command-line errors: a bad flag, an unreadable key file, or a volume that cannot be
//! created must print one line on stderr and exit with status 2, without listening.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::server::binary_path;

/// Runs keepring with `args`; it must exit on its own within a few seconds.
pub(crate) fn run(args: &[String]) -> Output {
    let mut child = Command::new(binary_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keepring");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "keepring {args:?} did not exit within 10 s; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn assert_startup_error(args: &[String], mention: &str) {
    let output = run(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "keepring {args:?}: exit status {:?}, stderr:\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "keepring {args:?}: want one stderr line, got:\n{stderr}"
    );
    assert!(
        lines[0].contains(mention),
        "keepring {args:?}: the error should mention {mention:?}: {stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

fn base_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--volume".to_string(),
        dir.join("vol").display().to_string(),
    ]
}

#[test]
fn unknown_flag_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = base_args(dir.path());
    args.push("--no-such-flag".to_string());
    assert_startup_error(&args, "--no-such-flag");
}

#[test]
fn unreadable_signing_key_file_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-key-file");
    let mut args = base_args(dir.path());
    args.push("--blob-signing-key-file".to_string());
    args.push(missing.display().to_string());
    assert_startup_error(&args, "no-such-key-file");
}

#[test]
fn volume_that_cannot_be_created_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("regular-file");
    std::fs::write(&file, b"not a directory").expect("write file");
    let volume = file.join("vol");
    let args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--volume".to_string(),
        volume.display().to_string(),
    ];
    assert_startup_error(&args, "regular-file");
}

#[test]
fn bad_workers_value_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = base_args(dir.path());
    args.push("--workers".to_string());
    args.push("lots".to_string());
    assert_startup_error(&args, "lots");
}
