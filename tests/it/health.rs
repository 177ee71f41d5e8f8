//! Drive health (issue 14): a volume whose writes or reads keep failing leaves the write
//! rotation, `/mounts` and `/metrics` say so and why, and a successful probe brings it
//! back. The failures are real ones from the kernel: EIO from an ext4 filesystem on a
//! loop device shut down with `EXT4_IOC_SHUTDOWN` (every read, write and probe fails, and
//! cannot be switched off again), and EPERM from a tmpfs volume root made immutable
//! (`chattr +i`: even root cannot create in it; `chattr -i` ends it, so the probe can
//! succeed). Both need root (mount, losetup, chattr); where refused the tests say why
//! and return.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::client::eventually;
use crate::support::*;

/// keepring's `DRIVE_ERRORS_MAX`: one error more makes a volume unhealthy.
const DRIVE_ERRORS_MAX: usize = 4;
/// A probe runs every 5 s (`DRIVE_PROBE_INTERVAL_MS`); two periods and some slack.
const PROBE_SEEN_WITHIN: Duration = Duration::from_secs(12);
const PULLS_DONE_WITHIN: Duration = Duration::from_secs(20);

/// A mount undone (lazily) on drop, so a failing test leaves none behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `mount ARGS... PATH`; None (with the reason printed) where the machine refuses.
fn mount(args: &[&str], path: &Path) -> Option<Mounted> {
    std::fs::create_dir_all(path).expect("mount point");
    match Command::new("mount").args(args).arg(path).output() {
        Ok(output) if output.status.success() => Some(Mounted(path.to_path_buf())),
        Ok(output) => {
            eprintln!(
                "skipping: mount {args:?} refused: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            None
        }
        Err(error) => {
            eprintln!("skipping: cannot run mount: {error}");
            None
        }
    }
}

/// Run a tool the test needs; false (with the reason printed) when it fails.
fn run(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            eprintln!("{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
            false
        }
        Err(error) => {
            eprintln!("cannot run {program}: {error}");
            false
        }
    }
}

/// Every further file operation on the ext4 filesystem at `mount_point` fails with EIO
/// (`EXT4_IOC_SHUTDOWN`, without flushing the journal: as a drive that died).
fn shut_down_ext4(mount_point: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // _IOR('X', 125, __u32)
    const EXT4_IOC_SHUTDOWN: libc::c_ulong = (2 << 30) | (4 << 16) | ((b'X' as libc::c_ulong) << 8) | 125;
    const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
    let dir = std::fs::File::open(mount_point)?;
    let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: the fd is open; the ioctl reads one u32 through the pointer.
    if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags as *const u32) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_of(server: &TestServer, uuid: &str) -> Value {
    let response = server.request(Request::get("/mounts").token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    let mounts: Value = serde_json::from_slice(&response.body).expect("mounts JSON");
    mounts
        .as_array()
        .expect("an array")
        .iter()
        .find(|mount| mount["uuid"] == uuid)
        .cloned()
        .unwrap_or_else(|| panic!("no mount {uuid} in {mounts}"))
}

/// The value of the series of `family` whose labels contain every one of `labels`.
fn metric(server: &TestServer, family: &str, labels: &[&str]) -> Option<f64> {
    let text = server.request(Request::get("/metrics")).text();
    text.lines()
        .filter(|line| line.strip_prefix(family).is_some_and(|rest| rest.starts_with('{')))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn uuid_file(volume: &Path) -> String {
    std::fs::read_to_string(volume.join(VOLUME_UUID_FILE))
        .expect("uuid file")
        .trim()
        .to_string()
}

/// A server on `volumes`, unsigned (plain locators), logging at debug (failed probes).
fn server_on(volumes: Vec<PathBuf>) -> TestServer {
    ServerBuilder::new()
        .volume_paths(volumes)
        .without_signing_key()
        .arg("--log-level")
        .arg("debug")
        .start()
}

/// PUT distinct blocks until one is stored under `volume`; its data.
fn put_until_stored_on(server: &TestServer, volume: &Path, seed_from: u64) -> Option<Vec<u8>> {
    (seed_from..seed_from + 200)
        .map(|seed| test_bytes(seed, 2000))
        .find(|data| server.put(data).status == 200 && block_path(volume, &md5_hex(data)).exists())
}

fn assert_unhealthy(server: &TestServer, uuid: &str, reason: &str, op: &str) {
    let mount = mount_of(server, uuid);
    assert_eq!(mount["health"], "unhealthy", "{mount}");
    assert_eq!(mount["health_reason"], reason, "{mount}");
    // keepstore's own fields are as they were: the volume is still configured writable.
    assert_eq!(mount["allow_write"], true, "{mount}");
    let errors = mount[format!("{op}_errors")].as_u64().unwrap_or(0);
    assert!(errors > DRIVE_ERRORS_MAX as u64, "{mount}");
    let uuid_label = format!("uuid=\"{uuid}\"");
    assert_eq!(metric(server, "keepring_volume_healthy", &[&uuid_label]), Some(0.0));
    let reason_label = format!("reason=\"{reason}\"");
    assert_eq!(
        metric(server, "keepring_volume_unhealthy", &[&uuid_label, &reason_label]),
        Some(1.0)
    );
    let op_label = format!("op=\"{op}\"");
    let counted = metric(server, "keepring_volume_io_errors_total", &[&uuid_label, &op_label]);
    assert!(
        counted.is_some_and(|count| count > DRIVE_ERRORS_MAX as f64),
        "{counted:?}"
    );
    let warned = |line: &str| line.contains("volume unhealthy") && line.contains(uuid) && line.contains(reason);
    assert!(
        server.log.wait_for(Duration::from_secs(2), warned).is_some(),
        "no warn line"
    );
}

#[test]
fn a_drive_whose_reads_fail_with_eio_is_reported_unhealthy_and_stays_out_while_its_probe_fails() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    // Sparse: ext4 writes a few MiB of metadata; more than 64 MiB stays free (a volume
    // with less is full for writes).
    std::fs::File::create(&image).unwrap().set_len(256 << 20).unwrap();
    if !run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]) {
        eprintln!("skipping: no ext4 image");
        return;
    }
    let drive = dir.path().join("drive");
    let Some(_mounted) = mount(&["-o", "loop", image.to_str().unwrap()], &drive) else {
        return;
    };
    let dying = drive.join("keep");
    let spare = dir.path().join("spare");
    std::fs::create_dir_all(&dying).unwrap();
    let server = server_on(vec![dying.clone(), spare.clone()]);
    let uuid = uuid_file(&dying);
    let data = put_until_stored_on(&server, &dying, 1).expect("a block stored on the ext4 volume");
    let locator = format!("{}+{}", md5_hex(&data), data.len());
    assert_eq!(mount_of(&server, &uuid)["health"], "ok");

    shut_down_ext4(&drive).expect("EXT4_IOC_SHUTDOWN");
    for _ in 0..=DRIVE_ERRORS_MAX {
        // The only copy is on the dead drive: each GET fails with its EIO.
        let response = server.get(&locator);
        assert_eq!(response.status, 500, "{}", response.summary());
    }
    assert!(
        server
            .log
            .lines()
            .iter()
            .any(|line| line.contains("Input/output error")),
        "the reads failed with EIO"
    );
    assert_unhealthy(&server, &uuid, "read_errors", "read");

    // Out of the write rotation: new blocks go to the other volume without one attempt on
    // the dead drive (a write there would have failed and said so).
    for seed in 500..520 {
        assert_eq!(server.put(&test_bytes(seed, 1000)).status, 200);
    }
    assert!(
        !server
            .log
            .lines()
            .iter()
            .any(|line| line.contains("block write failed")),
        "a write was tried on the unhealthy volume"
    );
    // Its probe fails (EIO), so it stays out.
    let probe_failed = |line: &str| line.contains("drive probe failed") && line.contains(&uuid);
    assert!(server.log.wait_for(PROBE_SEEN_WITHIN, probe_failed).is_some());
    assert_eq!(mount_of(&server, &uuid)["health"], "unhealthy");
    drop(server);
}

#[test]
fn a_volume_whose_writes_keep_failing_leaves_the_rotation_until_a_probe_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = dir.path().join("flaky");
    let Some(_mounted) = mount(&["-t", "tmpfs", "-o", "size=100m", "tmpfs"], &flaky) else {
        return;
    };
    let steady = dir.path().join("steady");
    let server = server_on(vec![flaky.clone(), steady.clone()]);
    let uuid = uuid_file(&flaky);
    // Blocks the pulls below fetch from this server itself; all on the steady volume.
    let blocks: Vec<Vec<u8>> = (0..=DRIVE_ERRORS_MAX as u64)
        .map(|seed| test_bytes(900 + seed, 3000))
        .collect();
    if !run("chattr", &["+i", flaky.to_str().unwrap()]) {
        eprintln!("skipping: chattr +i refused");
        return;
    }
    for data in &blocks {
        assert_eq!(server.put(data).status, 200);
        assert!(block_path(&steady, &md5_hex(data)).exists());
    }
    // Each pull names the flaky volume, so each one is a write there: EPERM, a new block
    // directory cannot be created in the immutable root.
    let items: Vec<String> = blocks
        .iter()
        .map(|data| {
            format!(
                r#"{{"locator":"{}+{}","servers":["http://{}"],"mount_uuid":"{uuid}"}}"#,
                md5_hex(data),
                data.len(),
                server.addr
            )
        })
        .collect();
    let list = format!("[{}]", items.join(","));
    let response = server.request(Request::put("/pull", list.as_bytes()).token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    let unhealthy = || mount_of(&server, &uuid)["health"] == "unhealthy";
    assert!(eventually(PULLS_DONE_WITHIN, unhealthy), "{}", mount_of(&server, &uuid));
    assert_unhealthy(&server, &uuid, "write_errors", "write");
    let probe_failed = |line: &str| line.contains("drive probe failed") && line.contains(&uuid);
    assert!(server.log.wait_for(PROBE_SEEN_WITHIN, probe_failed).is_some());
    assert_eq!(
        mount_of(&server, &uuid)["health"],
        "unhealthy",
        "a failed probe changes nothing"
    );

    assert!(run("chattr", &["-i", flaky.to_str().unwrap()]));
    let recovered = |line: &str| line.contains("volume healthy again") && line.contains(&uuid);
    assert!(
        server.log.wait_for(PROBE_SEEN_WITHIN, recovered).is_some(),
        "no recovery"
    );
    let mount = mount_of(&server, &uuid);
    assert_eq!(mount["health"], "ok", "{mount}");
    assert_eq!(mount["health_reason"], Value::Null, "{mount}");
    assert_eq!(mount["recent_write_errors"], 0, "the window starts afresh: {mount}");
    let uuid_label = format!("uuid=\"{uuid}\"");
    assert_eq!(metric(&server, "keepring_volume_healthy", &[&uuid_label]), Some(1.0));
    // The probe left nothing behind, and the volume takes writes again (once the last
    // failure's VOLUME_RETRY_MS is over).
    let leftovers: Vec<_> = walk(&flaky)
        .into_iter()
        .filter(|path| !path.ends_with(VOLUME_UUID_FILE))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mut seed = 2000;
    let stored_on_flaky = eventually(Duration::from_secs(15), || {
        seed += 1;
        let data = test_bytes(seed, 1000);
        server.put(&data).status == 200 && block_path(&flaky, &md5_hex(&data)).exists()
    });
    assert!(stored_on_flaky, "the recovered volume takes writes");
    drop(server);
}

/// Every file under `root` (not directories).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            match path.is_dir() {
                true => dirs.push(path),
                false => files.push(path),
            }
        }
    }
    files
}
