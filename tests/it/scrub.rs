//! The background scrubber and Arvados' repair loop around it (issue 14): a copy that rots
//! in place (bytes changed, size and mtime kept) is found by a scrub pass, set aside as
//! `<hash>.corrupt.<secs>`, leaves `/index`, and is counted; the other copies are not
//! touched; a later PUT stores a good copy again; a pull list (keep-balance's part, played
//! by the test) restores it from a peer; a restarted node resumes a pass where it stopped.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::client::eventually;
use crate::support::*;

/// How long a scrub with a 1 s interval gets to find a bad copy.
const FOUND_WITHIN: Duration = Duration::from_secs(15);

/// Flip one byte of a stored copy in place, keeping its size and mtime: what bit rot
/// looks like to everything but a reader.
fn rot(path: &Path, at: u64) {
    let mtime = std::fs::metadata(path).expect("stat").modified().expect("mtime");
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(at)).expect("seek");
    std::io::Read::read_exact(&mut file, &mut byte).expect("read");
    byte[0] ^= 0x40;
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.write_all(&byte).expect("write");
    file.set_modified(mtime).expect("keep mtime");
    file.sync_all().expect("sync");
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

/// The sum of a family's series for the volume `uuid`.
fn volume_metric(server: &TestServer, name: &str, uuid: &str) -> f64 {
    server
        .metric_values()
        .iter()
        .filter(|(series, _)| series.starts_with(&format!("{name}{{")) && series.contains(&format!("uuid=\"{uuid}\"")))
        .map(|(_, value)| value)
        .sum()
}

fn volume_uuid(volume: &Path) -> String {
    std::fs::read_to_string(volume.join(VOLUME_UUID_FILE))
        .expect("uuid file")
        .trim()
        .to_string()
}

fn quarantined(volume: &Path, hash: &str) -> Vec<String> {
    block_dir_entries(volume, hash)
        .into_iter()
        .filter(|name| name.starts_with(&format!("{hash}.corrupt.")))
        .collect()
}

fn index_lists(server: &TestServer, hash: &str) -> bool {
    let index = server.request(Request::get("/index").token(ROOT_TOKEN));
    assert_eq!(index.status, 200, "{}", index.summary());
    index.text().lines().any(|line| line.starts_with(hash))
}

fn scrubbing(interval_secs: &str, rate_mb: &str) -> ServerBuilder {
    ServerBuilder::new()
        .arg("--scrub-interval-secs")
        .arg(interval_secs)
        .arg("--scrub-rate-mb")
        .arg(rate_mb)
}

#[test]
fn a_rotted_copy_is_found_quarantined_and_a_later_put_stores_a_good_one() {
    let server = scrubbing("1", "0").start();
    let volume = server.volume(0).to_path_buf();
    let uuid = volume_uuid(&volume);
    // Sizes around the scrubber's 128 KiB chunk: one chunk, exactly two, a ragged tail.
    let blocks: Vec<Vec<u8>> = [1usize, 3000, 128 * 1024, 256 * 1024, 300_001]
        .iter()
        .enumerate()
        .map(|(seed, &len)| test_bytes(700 + seed as u64, len))
        .collect();
    for data in &blocks {
        server.put_block(data);
    }
    let bad = &blocks[4];
    let bad_hash = md5_hex(bad);
    rot(&block_path(&volume, &bad_hash), 200_000);
    assert!(
        eventually(FOUND_WITHIN, || quarantined(&volume, &bad_hash).len() == 1),
        "not quarantined: {:?}",
        block_dir_entries(&volume, &bad_hash)
    );
    let aside = volume.join(&bad_hash[..3]).join(&quarantined(&volume, &bad_hash)[0]);
    let mut rotted = bad.clone();
    rotted[200_000] ^= 0x40;
    assert_eq!(std::fs::read(&aside).expect("kept"), rotted, "kept as it was found");
    assert!(!block_path(&volume, &bad_hash).exists(), "left its name");
    assert!(!index_lists(&server, &bad_hash), "/index still lists the bad copy");
    for data in &blocks[..4] {
        let hash = md5_hex(data);
        assert_eq!(&std::fs::read(block_path(&volume, &hash)).expect("untouched"), data);
        assert!(index_lists(&server, &hash));
        assert!(quarantined(&volume, &hash).is_empty());
    }
    let line = server
        .log
        .wait_for(Duration::from_secs(5), |line| {
            line.contains("quarantined") && line.contains(&bad_hash) && line.contains(&uuid)
        })
        .expect("one log line for the quarantined copy");
    assert!(line.contains(&aside.display().to_string()), "names the path: {line}");
    let total: usize = blocks.iter().map(Vec::len).sum();
    assert!(eventually(FOUND_WITHIN, || volume_metric(
        &server,
        "keepring_scrub_pass_seconds",
        &uuid
    ) >= 1.0));
    assert_eq!(
        volume_metric(&server, "keepring_scrub_corrupt_blocks_total", &uuid),
        1.0
    );
    assert_eq!(volume_metric(&server, "keepring_quarantined_blocks_total", &uuid), 1.0);
    assert!(volume_metric(&server, "keepring_scrub_blocks_total", &uuid) >= blocks.len() as f64);
    assert!(volume_metric(&server, "keepring_scrub_bytes_total", &uuid) >= total as f64);
    let listing = server.request(Request::get(&format!("/mounts/{uuid}/quarantine")).token(ROOT_TOKEN));
    assert!(
        listing.text().starts_with(&format!("{bad_hash}+{} ", bad.len())),
        "{}",
        listing.text()
    );
    // The client's next PUT of the block stores a good copy again, and it stays good.
    assert_eq!(server.put(bad).status, 200);
    assert_eq!(
        &std::fs::read(block_path(&volume, &bad_hash)).expect("stored again"),
        bad
    );
    assert!(index_lists(&server, &bad_hash));
    // Two passes' worth of checks after the PUT hold at least one whole pass.
    let checked_before = volume_metric(&server, "keepring_scrub_blocks_total", &uuid);
    assert!(eventually(FOUND_WITHIN, || {
        volume_metric(&server, "keepring_scrub_blocks_total", &uuid) >= checked_before + 2.0 * blocks.len() as f64
    }));
    assert!(
        block_path(&volume, &bad_hash).exists(),
        "the good copy passes the next scrub"
    );
    assert_eq!(
        volume_metric(&server, "keepring_scrub_corrupt_blocks_total", &uuid),
        1.0
    );
    assert_eq!(server.get(&signed_locator_for(bad)).body, *bad);
}

#[test]
fn the_repair_loop_pulls_a_good_copy_back_from_a_peer() {
    let peer = TestServer::start();
    let node = scrubbing("1", "0").start();
    let data = test_bytes(801, 200_000);
    let hash = md5_hex(&data);
    peer.put_block(&data);
    node.put_block(&data);
    let volume = node.volume(0).to_path_buf();
    rot(&block_path(&volume, &hash), 7);
    assert!(eventually(FOUND_WITHIN, || !quarantined(&volume, &hash).is_empty()));
    assert!(!index_lists(&node, &hash));
    assert_eq!(node.get(&signed_locator_for(&data)).status, 404);
    // keep-balance sees one replica fewer and sends this node a pull list naming the peer.
    let list = format!(
        r#"[{{"locator":"{hash}+{}","servers":["http://{}"],"mount_uuid":""}}]"#,
        data.len(),
        peer.addr
    );
    let pulled = node.request(Request::put("/pull", list.as_bytes()).token(ROOT_TOKEN));
    assert_eq!(pulled.status, 200, "{}", pulled.summary());
    assert!(
        eventually(Duration::from_secs(20), || block_path(&volume, &hash).exists()),
        "not pulled back"
    );
    assert_eq!(std::fs::read(block_path(&volume, &hash)).expect("pulled"), data);
    assert!(index_lists(&node, &hash));
    assert_eq!(node.get(&signed_locator_for(&data)).body, data);
    assert_eq!(
        quarantined(&volume, &hash).len(),
        1,
        "the bad copy stays for the operator"
    );
}

#[test]
fn a_restarted_node_resumes_the_pass_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let volume: PathBuf = dir.path().join("volume");
    // 1 MB/s over 12 blocks of 1 MB: a pass of about 12 s, its position saved every 5 s.
    let start = || {
        scrubbing("1", "1")
            .volume_paths(vec![volume.clone()])
            .without_signing_key()
            .start()
    };
    let mut first = start();
    let mut hashes: Vec<String> = (0..12)
        .map(|seed| first.put_block(&test_bytes(900 + seed, 1_000_000)))
        .map(|locator| locator[..32].to_string())
        .collect();
    hashes.sort();
    let state_file = volume.join("keepring-scrub-state");
    let saved_after = || -> Option<String> {
        let text = std::fs::read_to_string(&state_file).ok()?;
        let after = text.lines().find_map(|line| line.strip_prefix("after "))?;
        Some(after.to_string())
    };
    assert!(
        eventually(Duration::from_secs(20), || saved_after().is_some()),
        "no position saved: {:?}",
        std::fs::read_to_string(&state_file)
    );
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(20)).is_some());
    let after = saved_after().expect("position kept over the stop");
    let remaining = hashes.iter().filter(|hash| **hash > after).count();
    assert!(remaining > 0 && remaining < hashes.len(), "{after} among {hashes:?}");
    let second = start();
    let uuid = volume_uuid(&volume);
    assert!(
        second
            .log
            .wait_for(Duration::from_secs(10), |line| line.contains("scrub pass resumed")
                && line.contains(&after))
            .is_some(),
        "did not resume after {after}"
    );
    let finished = second
        .log
        .wait_for(Duration::from_secs(30), |line| {
            line.contains("scrub pass finished") && line.contains(&uuid)
        })
        .expect("the resumed pass did not finish");
    assert!(
        finished.contains(&format!("blocks={remaining}")) || finished.contains(&format!("\"blocks\":{remaining}")),
        "the resumed pass checks only the {remaining} blocks after {after}: {finished}"
    );
}
