//! Live volumes (issue "Live volumes"): volumes found under `--volume-root` and in the
//! mount table while the server runs, taken out when they go, with stable UUIDs, and a
//! cluster config re-read on SIGHUP. Mount tests need `mount -t tmpfs` (root); where the
//! machine refuses it they print why and return.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::client::eventually;
use crate::support::*;

const CHANGE_SEEN_WITHIN: Duration = Duration::from_secs(5);

fn mounts(server: &TestServer) -> Vec<Value> {
    let response = server.request(Request::get("/mounts").token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    match serde_json::from_slice(&response.body).expect("mounts JSON") {
        Value::Array(items) => items,
        other => panic!("mounts is not an array: {other}"),
    }
}

fn mount_paths(server: &TestServer) -> Vec<String> {
    mounts(server)
        .iter()
        .map(|mount| mount["device_id"].as_str().unwrap_or("").to_string())
        .collect()
}

fn serves(server: &TestServer, path: &Path) -> bool {
    let wanted = path.display().to_string();
    mount_paths(server)
        .iter()
        .any(|device_id| device_id.ends_with(&format!(":{wanted}")))
}

fn uuid_of(server: &TestServer, path: &Path) -> Option<String> {
    let wanted = format!(":{}", path.display());
    mounts(server)
        .into_iter()
        .find(|mount| mount["device_id"].as_str().unwrap_or("").ends_with(&wanted))
        .and_then(|mount| mount["uuid"].as_str().map(str::to_string))
}

fn root_server(root: &Path, extra: &[&str]) -> TestServer {
    let mut builder = ServerBuilder::new().volume_paths(Vec::new()).without_signing_key();
    builder = builder.arg("--volume-root").arg(root.to_str().expect("utf-8 path"));
    for arg in extra {
        builder = builder.arg(arg);
    }
    builder.start()
}

/// PUT distinct blocks until one lands under `volume` (placement spreads them); returns
/// its hash, or None by the deadline.
fn put_until_stored_on(server: &TestServer, volume: &Path, within: Duration) -> Option<String> {
    let mut seed = 1000;
    let mut found = None;
    eventually(within, || {
        seed += 1;
        let data = test_bytes(seed, 1024);
        let response = server.put(&data);
        let hash = md5_hex(&data);
        if response.status == 200 && block_path(volume, &hash).exists() {
            found = Some(hash);
            return true;
        }
        false
    });
    found
}

#[test]
fn keep_dir_created_under_a_volume_root_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    std::fs::create_dir_all(root.join("disk1/keep")).unwrap();
    let server = root_server(&root, &[]);
    assert_eq!(mounts(&server).len(), 1);
    std::fs::create_dir_all(root.join("disk2")).unwrap();
    std::fs::create_dir(root.join("disk2/keep")).unwrap();
    let new_volume = root.join("disk2/keep").canonicalize().unwrap();
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || serves(&server, &new_volume)),
        "{:?}",
        mount_paths(&server)
    );
    let hash = put_until_stored_on(&server, &new_volume, CHANGE_SEEN_WITHIN).expect("a PUT stored on the new volume");
    assert!(block_path(&new_volume, &hash).is_file());
    let added = |line: &str| line.contains("volume added") && line.contains("disk2");
    assert!(server.log.wait_for(CHANGE_SEEN_WITHIN, added).is_some());
}

#[test]
fn no_volume_at_all_answers_507_until_one_appears() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    std::fs::create_dir_all(&root).unwrap();
    let server = root_server(&root, &[]);
    let data = test_bytes(7, 100);
    assert_eq!(server.put(&data).status, 507);
    std::fs::create_dir_all(root.join("disk1/keep")).unwrap();
    assert!(eventually(CHANGE_SEEN_WITHIN, || server.put(&data).status == 200));
    assert!(block_path(&root.join("disk1/keep"), &md5_hex(&data)).is_file());
}

#[test]
fn renamed_volume_leaves_and_other_requests_never_notice() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    std::fs::create_dir_all(root.join("disk1/keep")).unwrap();
    std::fs::create_dir_all(root.join("disk2/keep")).unwrap();
    let server = Arc::new(root_server(&root, &[]));
    assert_eq!(mounts(&server).len(), 2);
    let disk1 = root.join("disk1/keep").canonicalize().unwrap();
    let disk2 = root.join("disk2/keep").canonicalize().unwrap();
    // Blocks on the volume that stays must read fine throughout; new PUTs must land.
    let staying: Vec<Vec<u8>> = (0..40)
        .map(|seed| test_bytes(90_000 + seed, 2048))
        .filter(|data| {
            server.put_block(data);
            block_path(&disk2, &md5_hex(data)).is_file()
        })
        .collect();
    assert!(!staying.is_empty());
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (server, stop, failures, done) = (server.clone(), stop.clone(), failures.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seed = 50_000;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                let data = test_bytes(seed, 2048);
                let stored = server.put(&data);
                let old = &staying[seed as usize % staying.len()];
                let read = server.get(&format!("{}+{}", md5_hex(old), old.len()));
                if stored.status != 200 || read.status != 200 || read.body != *old {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    assert!(eventually(CHANGE_SEEN_WITHIN, || done.load(Ordering::Relaxed) > 20));
    // Out of the root entirely: the volume must go, traffic must carry on.
    std::fs::rename(root.join("disk1"), dir.path().join("unplugged")).unwrap();
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || !serves(&server, &disk1)),
        "{:?}",
        mount_paths(&server)
    );
    let after = done.load(Ordering::Relaxed);
    assert!(eventually(CHANGE_SEEN_WITHIN, || done.load(Ordering::Relaxed) > after + 20));
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed while a volume left"
    );
    assert_eq!(mounts(&server).len(), 1);
    let removed = |line: &str| line.contains("volume removed") && line.contains("disk1");
    assert!(server.log.wait_for(CHANGE_SEEN_WITHIN, removed).is_some());
}

#[test]
fn uuid_is_stable_across_a_restart_and_a_move_to_another_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    std::fs::create_dir_all(root.join("disk1/keep")).unwrap();
    let first_path = root.join("disk1/keep").canonicalize().unwrap();
    let uuid = {
        let server = root_server(&root, &[]);
        uuid_of(&server, &first_path).expect("volume listed")
    };
    let server = root_server(&root, &[]);
    assert_eq!(
        uuid_of(&server, &first_path).as_deref(),
        Some(uuid.as_str()),
        "restart keeps the UUID"
    );
    std::fs::rename(root.join("disk1"), root.join("disk7")).unwrap();
    let moved = root.join("disk7/keep").canonicalize().unwrap();
    assert!(eventually(CHANGE_SEEN_WITHIN, || uuid_of(&server, &moved).is_some()));
    assert_eq!(uuid_of(&server, &moved), Some(uuid), "a move keeps the UUID");
}

#[test]
fn sigusr1_rescans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    std::fs::create_dir_all(root.join("disk1/keep")).unwrap();
    let mut server = root_server(&root, &[]);
    server.signal(libc::SIGUSR1);
    std::fs::create_dir_all(root.join("disk2/keep")).unwrap();
    server.signal(libc::SIGUSR1);
    assert!(eventually(CHANGE_SEEN_WITHIN, || mounts(&server).len() == 2));
    assert!(server.is_running(), "SIGUSR1 must not stop the server");
}

fn write_config(path: &Path, volumes: &[(&str, &Path)], signing_key: &str) {
    let mut text = format!(
        "Clusters:\n  zzzzz:\n    SystemRootToken: {ROOT_TOKEN}\n    Collections:\n      BlobSigningKey: {signing_key}\n    Volumes:\n"
    );
    for (uuid, root) in volumes {
        text.push_str(&format!(
            "      {uuid}:\n        Driver: Directory\n        DriverParameters: {{Root: {}}}\n        Replication: 1\n",
            root.display()
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn sighup_applies_an_added_volume_and_a_rotated_key_and_survives_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let (volume_a, volume_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&volume_a).unwrap();
    std::fs::create_dir_all(&volume_b).unwrap();
    let config = dir.path().join("config.yml");
    let uuid_a = "zzzzz-nyw5e-aaaaaaaaaaaaaaa";
    let uuid_b = "zzzzz-nyw5e-bbbbbbbbbbbbbbb";
    write_config(&config, &[(uuid_a, &volume_a)], SIGNING_KEY);
    let mut server = ServerBuilder::new()
        .volume_paths(Vec::new())
        .without_signing_key()
        .without_root_token()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    let uuids = |server: &TestServer| -> Vec<String> {
        mounts(server)
            .iter()
            .map(|mount| mount["uuid"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(uuids(&server), [uuid_a], "configured UUID is used");
    let data = test_bytes(99, 500);
    let locator = server.put_block(&data);
    assert_eq!(server.get(&locator).status, 200, "signed with the configured key");

    let rotated_key = "rotatedkey0123456789abcdefghijklmnopqrstuvwxyz0123";
    write_config(&config, &[(uuid_a, &volume_a), (uuid_b, &volume_b)], rotated_key);
    server.signal(libc::SIGHUP);
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || uuids(&server) == [uuid_a, uuid_b]),
        "{:?}",
        uuids(&server)
    );
    assert_eq!(
        server.get(&locator).status,
        400,
        "old signature invalid after key rotation"
    );
    let hash = md5_hex(&data);
    let resigned = signed_locator_with(
        &hash,
        data.len(),
        USER_TOKEN,
        rotated_key,
        SIGNING_TTL_SECS_DEFAULT,
        now_secs() + 600,
    );
    assert_eq!(server.get(&resigned).status, 200, "new key accepted");

    std::fs::write(&config, "Clusters: [this is not\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(server
        .log
        .wait_for(CHANGE_SEEN_WITHIN, |line| line.contains("not reloaded"))
        .is_some());
    assert!(server.is_running());
    assert_eq!(uuids(&server), [uuid_a, uuid_b], "the running configuration is kept");
    assert_eq!(server.get(&resigned).status, 200);
}

/// Mount a tmpfs of `size_mib` at `path`; None (with the reason printed) where not allowed.
fn mount_tmpfs(path: &Path, size_mib: u64) -> Option<TmpfsMount> {
    std::fs::create_dir_all(path).unwrap();
    let output = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
        .arg(path)
        .output();
    match output {
        Ok(output) if output.status.success() => Some(TmpfsMount(path.to_path_buf())),
        Ok(output) => {
            eprintln!(
                "skipping: mount -t tmpfs not permitted here: {}",
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

/// Unmounts on drop, so a failing test leaves no mount behind.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn unmount(&self) -> bool {
        Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn tmpfs_mounted_under_a_root_is_found_and_umount_takes_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    std::fs::create_dir_all(root.join("disk1/keep")).unwrap();
    std::fs::create_dir_all(root.join("disk3")).unwrap();
    let server = root_server(&root, &[]);
    let Some(mount) = mount_tmpfs(&root.join("disk3"), 100) else {
        return;
    };
    std::fs::create_dir(root.join("disk3/keep")).unwrap();
    let new_volume = root.join("disk3/keep").canonicalize().unwrap();
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || serves(&server, &new_volume)),
        "{:?}",
        mount_paths(&server)
    );
    put_until_stored_on(&server, &new_volume, CHANGE_SEEN_WITHIN).expect("a PUT stored on the tmpfs");
    assert!(mount.unmount(), "umount");
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || !serves(&server, &new_volume)),
        "{:?}",
        mount_paths(&server)
    );
    let removed = |line: &str| line.contains("volume removed") && line.contains("disk3");
    assert!(server.log.wait_for(CHANGE_SEEN_WITHIN, removed).is_some());
    let data = test_bytes(4242, 3000);
    assert_eq!(server.put(&data).status, 200, "the remaining volume still takes writes");
}

#[test]
fn mount_discovery_finds_a_tmpfs_with_a_keep_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("mnt");
    let server = ServerBuilder::new()
        .without_signing_key()
        .arg("--discover-mounts")
        .start();
    let Some(mount) = mount_tmpfs(&mount_point, 100) else {
        return;
    };
    // The mount is seen (mount table), then the keep dir made on it (a watch on the mount
    // point): no signal, no polling.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::create_dir(mount_point.join("keep")).unwrap();
    let keep = mount_point.join("keep").canonicalize().unwrap();
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || serves(&server, &keep)),
        "{:?}",
        mount_paths(&server)
    );
    assert!(mount.unmount());
    assert!(eventually(CHANGE_SEEN_WITHIN, || !serves(&server, &keep)));
}

#[test]
fn full_tmpfs_sends_writes_on_then_507_with_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    // A volume is full below 64 MiB free: 66 MiB tmpfs volumes fill after ~2 MiB each.
    let Some(_small) = mount_tmpfs(&root.join("small"), 66) else {
        return;
    };
    let Some(_other) = mount_tmpfs(&root.join("other"), 66) else {
        return;
    };
    std::fs::create_dir(root.join("small/keep")).unwrap();
    std::fs::create_dir(root.join("other/keep")).unwrap();
    let server = root_server(&root, &[]);
    assert_eq!(mounts(&server).len(), 2);
    let mut stored = Vec::new();
    let mut final_status = 0;
    for seed in 0..40 {
        let data = test_bytes(70_000 + seed, 512 * 1024);
        let response = server.put(&data);
        final_status = response.status;
        if response.status != 200 {
            break;
        }
        stored.push(md5_hex(&data));
    }
    assert_eq!(final_status, 507, "all volumes full → 507 insufficient storage");
    let (small, other) = (root.join("small/keep"), root.join("other/keep"));
    assert!(stored.iter().any(|hash| block_path(&small, hash).is_file()));
    assert!(stored.iter().any(|hash| block_path(&other, hash).is_file()));
    for volume in [&small, &other] {
        for entry in walk_files(volume) {
            let name = entry.file_name().unwrap().to_string_lossy().to_string();
            assert!(!name.starts_with("tmp"), "partial file left: {}", entry.display());
        }
    }
    for hash in &stored {
        let response = server.get(&format!("{hash}+{}", 512 * 1024));
        assert_eq!(response.status, 200);
        assert_eq!(md5_hex(&response.body), *hash);
    }
}

#[test]
fn a_volume_too_full_for_a_streamed_write_says_so_before_the_body() {
    // Two 40 MiB PUTs both prefer a 66 MiB tmpfs. The first reserves its 40 MiB there
    // (fallocate) as soon as its head arrives; the second is refused there before its body
    // (26 MiB left), so it never starts a copy it cannot finish, and ends up, whole, on the
    // other volume, with no temp file left on either.
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let Some(_mount) = mount_tmpfs(&small, 66) else {
        return;
    };
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let server = ServerBuilder::new()
        .volume_paths(vec![small.clone(), other.clone()])
        .without_signing_key()
        .start();
    let uuid_tail = |volume: &Path| {
        let uuid = std::fs::read_to_string(volume.join(VOLUME_UUID_FILE)).expect("volume uuid file");
        uuid.trim()[12..].to_string()
    };
    let (small_tail, other_tail) = (uuid_tail(&small), uuid_tail(&other));
    // keep-protocol.md §5: the first volume is the lowest md5(hash + uuid tail).
    let prefers_small = |hash: &str| {
        md5_hex(format!("{hash}{small_tail}").as_bytes()) < md5_hex(format!("{hash}{other_tail}").as_bytes())
    };
    let mut data = test_bytes(4040, 40 * 1024 * 1024);
    let mut blocks = Vec::new();
    for seed in 0u64.. {
        data[..8].copy_from_slice(&seed.to_le_bytes());
        let hash = md5_hex(&data);
        if prefers_small(&hash) {
            blocks.push((hash, data.clone()));
            if blocks.len() == 2 {
                break;
            }
        }
    }
    let mut conns: Vec<_> = blocks
        .iter()
        .map(|(hash, data)| {
            let mut conn = server.conn();
            let head = format!(
                "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
                data.len()
            );
            conn.write_raw(head.as_bytes()).expect("write head");
            conn
        })
        .collect();
    let temps = |volume: &Path| {
        walk_files(volume)
            .into_iter()
            .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("tmp"))
            .count()
    };
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || temps(&small) == 1),
        "the first PUT should have reserved its copy on the small volume"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(temps(&small), 1, "the second must not start a copy that cannot fit");
    for ((hash, data), conn) in blocks.iter().zip(conns.iter_mut()) {
        conn.write_raw(data).expect("write body");
        let response = conn.read_response("PUT").expect("PUT response");
        assert_eq!(response.status, 200, "{hash}: {}", response.summary());
    }
    // Whichever head arrived first took the small volume; the other went whole to the other.
    let on_small: Vec<usize> = (0..2)
        .filter(|&index| block_path(&small, &blocks[index].0).is_file())
        .collect();
    assert_eq!(on_small.len(), 1, "exactly one block fits on the small volume");
    let moved = 1 - on_small[0];
    assert!(!block_path(&small, &blocks[moved].0).exists());
    assert_eq!(
        std::fs::read(block_path(&other, &blocks[moved].0)).unwrap(),
        blocks[moved].1
    );
    assert!(server
        .log
        .wait_for(CHANGE_SEEN_WITHIN, |line| line.contains("volume full"))
        .is_some());
    assert_eq!((temps(&small), temps(&other)), (0, 0), "temp files left behind");
    for (hash, data) in &blocks {
        let get = server.get(&format!("{hash}+{}", data.len()));
        assert_eq!(get.status, 200, "{}", get.summary());
        assert_eq!(md5_hex(&get.body), *hash);
    }
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn unmounted_configured_volume_is_not_replaced_by_the_directory_underneath() {
    let dir = tempfile::tempdir().unwrap();
    let drive = dir.path().join("drive");
    let other = dir.path().join("other");
    let Some(mount) = mount_tmpfs(&drive, 100) else { return };
    let server = ServerBuilder::new()
        .volume_paths(vec![drive.clone(), other.clone()])
        .without_signing_key()
        .start();
    let drive_root = drive.canonicalize().unwrap();
    assert!(serves(&server, &drive_root));
    assert!(mount.unmount());
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || !serves(&server, &drive_root)),
        "{:?}",
        mount_paths(&server)
    );
    for seed in 0..10 {
        assert_eq!(server.put(&test_bytes(500 + seed, 1000)).status, 200);
    }
    let underneath: Vec<_> = std::fs::read_dir(&drive)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        underneath.is_empty(),
        "nothing written onto the root filesystem: {underneath:?}"
    );
}

#[test]
fn uuid_is_stable_across_a_remount_at_another_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    let drive = dir.path().join("the-drive");
    std::fs::create_dir_all(drive.join("keep")).unwrap();
    std::fs::create_dir_all(root.join("slot1")).unwrap();
    std::fs::create_dir_all(root.join("slot2")).unwrap();
    let bind = |target: &Path| Command::new("mount").arg("--bind").arg(&drive).arg(target).status();
    match bind(&root.join("slot1")) {
        Ok(status) if status.success() => {}
        _ => {
            eprintln!("skipping: mount --bind not permitted here");
            return;
        }
    }
    let first = TmpfsMount(root.join("slot1"));
    let server = root_server(&root, &[]);
    let slot1 = root.join("slot1/keep");
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || uuid_of(&server, &slot1).is_some()),
        "{:?}",
        mount_paths(&server)
    );
    let uuid = uuid_of(&server, &slot1).unwrap();
    assert!(first.unmount());
    assert!(eventually(CHANGE_SEEN_WITHIN, || uuid_of(&server, &slot1).is_none()));
    assert!(bind(&root.join("slot2"))
        .map(|status| status.success())
        .unwrap_or(false));
    let _second = TmpfsMount(root.join("slot2"));
    let slot2 = root.join("slot2/keep");
    assert!(
        eventually(CHANGE_SEEN_WITHIN, || uuid_of(&server, &slot2).is_some()),
        "{:?}",
        mount_paths(&server)
    );
    assert_eq!(
        uuid_of(&server, &slot2),
        Some(uuid),
        "the drive keeps its UUID at its new mount point"
    );
}

#[test]
fn a_filesystem_mounted_read_only_is_served_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("drives");
    let drive = root.join("disk1");
    let Some(_mount) = mount_tmpfs(&drive, 100) else { return };
    std::fs::create_dir(drive.join("keep")).unwrap();
    let data = test_bytes(777, 3000);
    let hash = md5_hex(&data);
    write_block_file(&drive.join("keep"), &hash, &data);
    let remounted = Command::new("mount").args(["-o", "remount,ro"]).arg(&drive).status();
    assert!(
        remounted.map(|status| status.success()).unwrap_or(false),
        "remount read-only"
    );
    let server = root_server(&root, &[]);
    let listed = mounts(&server);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["allow_write"], false, "{listed:?}");
    let read = server.get(&format!("{hash}+{}", data.len()));
    assert_eq!(read.status, 200);
    assert_eq!(read.body, data);
    assert_eq!(server.put(&test_bytes(778, 100)).status, 507, "no writable volume");
}

#[test]
fn concurrent_big_writes_to_nearly_full_volumes_store_every_block_that_fits() {
    // Three 64 MiB PUTs at once on two empty 100 MiB volumes: two fit (one on each), the
    // third gets 507. Without reservations two writes could stream into the same volume,
    // both hit ENOSPC and both fall back, storing one block where two fit.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let Some(_mount_a) = mount_tmpfs(&a, 100) else {
        return;
    };
    let Some(_mount_b) = mount_tmpfs(&b, 100) else {
        return;
    };
    let server = ServerBuilder::new()
        .volume_paths(vec![a.clone(), b.clone()])
        .without_signing_key()
        .start();
    let blocks: Vec<Vec<u8>> = (0..3).map(|seed| test_bytes(6400 + seed, 64 * 1024 * 1024)).collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let puts: Vec<_> = blocks
            .iter()
            .map(|data| scope.spawn(|| server.put(data).status))
            .collect();
        puts.into_iter().map(|put| put.join().expect("PUT thread")).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 507], "{statuses:?}");
    let stored_on = |volume: &Path| {
        blocks
            .iter()
            .filter(|data| block_path(volume, &md5_hex(data)).is_file())
            .count()
    };
    assert_eq!((stored_on(&a), stored_on(&b)), (1, 1));
    for volume in [&a, &b] {
        let temps = walk_files(volume)
            .into_iter()
            .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("tmp"))
            .count();
        assert_eq!(temps, 0, "temp files left on {}", volume.display());
    }
}
