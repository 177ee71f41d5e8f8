//! The contract's checks only an S3 volume has, on the test store's shared bucket
//! (keepstore 3.2.1's `s3_volume.go` rules, and its `s3_volume_test.go` as the model):
//! the store refuses bytes that do not match their hash (Content-MD5); keys follow
//! PrefixLength and the index finds them under any prefix, with the `recent/` marker's
//! time; `Mtime` makes the marker a block written without one lacks; UnsafeDelete and the
//! race window; untrash re-marks; fixRace on a read; the emptier; the probe; index paging.
//!
//! Objects are planted and looked at with a plain `Client` on the same bucket. A block
//! cannot be made old (S3 sets LastModified), so the trash rule is given a `now` in the
//! future, or a signing TTL of 0, instead.

use std::time::{Duration, Instant, SystemTime};

use super::{fresh_block, in_ring, md5_hex, s3_parameters, s3_volume, trash_state, trash_state_alone, DAY_SECS};
use crate::s3::{Client, S3Error};
use crate::volume::location::S3Parameters;
use crate::volume::s3::{read_exact, EmptyCounts, S3Bucket};
use crate::volume::trash::{unix_nanos, TrashOutcome, TrashRules};

/// Read block `hash` back whole through `open` and `read_exact`.
pub(super) fn get(bucket: &S3Bucket, hash: &str, signing_ttl: Duration) -> Option<Vec<u8>> {
    in_ring(async {
        let mut object = bucket.open(hash, signing_ttl).await.expect("S3 open")?;
        let size = object.info.size as usize;
        let (result, data) = read_exact(&mut object, Vec::new(), 0, size).await;
        result.expect("S3 read");
        assert_eq!(object.remaining(), 0, "the body is exactly the object's size");
        Some(data)
    })
}

/// Every index entry under `prefix`, page after page.
pub(super) fn index(bucket: &S3Bucket, prefix: &str) -> Vec<(String, u64, i128)> {
    index_pages(bucket, prefix).into_iter().flatten().collect()
}

fn index_pages(bucket: &S3Bucket, prefix: &str) -> Vec<Vec<(String, u64, i128)>> {
    in_ring(async {
        let mut lister = bucket.index(prefix);
        let mut pages = Vec::new();
        while let Some(page) = lister.next_page(bucket).await.expect("S3 index") {
            pages.push(
                page.into_iter()
                    .map(|entry| (entry.hash, entry.size, entry.mtime_ns))
                    .collect(),
            );
        }
        pages
    })
}

/// A bucket of its own parameters (its volume opened by `Volume::open_s3`).
fn bucket_with(parameters: &S3Parameters) -> std::sync::Arc<S3Bucket> {
    s3_volume(parameters).s3.expect("an S3 volume has a bucket")
}

fn bucket(prefix_length: usize) -> std::sync::Arc<S3Bucket> {
    bucket_with(&s3_parameters(prefix_length))
}

/// A plain client on the same bucket, to plant and look at objects.
fn plain() -> Client {
    Client::new(crate::s3::testing::test_store().client_config()).expect("client")
}

/// The object's LastModified; None when it is not there.
fn modified(client: &Client, key: &str) -> Option<SystemTime> {
    in_ring(client.head(key))
        .unwrap_or_else(|error| panic!("HEAD {key}: {error}"))
        .map(|info| info.last_modified)
}

/// Write through the request path.
pub(super) fn put(bucket: &S3Bucket, data: &[u8]) -> String {
    let hash = md5_hex(data);
    let (result, _) = in_ring(bucket.write(&hash, data.to_vec()));
    result.expect("S3 write");
    hash
}

fn trash_rules(signing_ttl_secs: u64, lifetime_secs: u64) -> TrashRules {
    TrashRules {
        signing_ttl_secs,
        lifetime_secs,
    }
}

/// keepstore's trash racing a write: the block object is gone but a `trash/` copy made
/// right after its `recent/` marker is there.
fn plant_a_race(bucket: &S3Bucket, client: &Client, data: &[u8]) -> String {
    let hash = put(bucket, data);
    let key = bucket.key(&hash);
    in_ring(async {
        client.copy(&key, &format!("trash/{key}")).await.expect("copy to trash");
        client.delete(&key).await.expect("delete the block object");
    });
    hash
}

#[test]
fn a_write_whose_bytes_do_not_match_its_hash_is_refused_and_leaves_nothing() {
    let (bucket, client) = (bucket(0), plain());
    let claimed = md5_hex(&fresh_block(1000));
    let (result, returned) = in_ring(bucket.write(&claimed, fresh_block(1000)));
    assert!(matches!(result, Err(S3Error::Store { .. })), "{result:?}");
    assert_eq!(returned.len(), 1000, "the buffer comes back");
    assert_eq!(modified(&client, &claimed), None, "no object");
    assert_eq!(modified(&client, &format!("recent/{claimed}")), None, "no marker");
    let (result, _) = in_ring(bucket.write("not-a-hash", b"x".to_vec()));
    assert!(matches!(result, Err(S3Error::Protocol(_))), "{result:?}");
}

#[test]
fn keys_follow_the_prefix_length_and_the_index_finds_them_with_the_marker_time() {
    let client = plain();
    for prefix_length in [0, 3] {
        let bucket = bucket(prefix_length);
        let data = fresh_block(777);
        let hash = put(&bucket, &data);
        let (plain_key, prefixed_key) = (hash.clone(), format!("{}/{hash}", &hash[..3]));
        let (key, other) = match prefix_length {
            0 => (&plain_key, &prefixed_key),
            _ => (&prefixed_key, &plain_key),
        };
        assert_eq!(&bucket.key(&hash), key);
        assert!(modified(&client, key).is_some(), "stored at {key}");
        assert_eq!(modified(&client, other), None, "not at {other}");
        let marked = modified(&client, &format!("recent/{key}")).expect("recent/ marker");
        assert_eq!(bucket.block_of(key), Some(hash.as_str()));
        assert_eq!(bucket.block_of(&format!("recent/{key}")), None);
        assert_eq!(
            bucket.block_of(&format!("{}/{hash}", &hash[1..4])),
            None,
            "another directory's"
        );
        for digits in [1, 2, 3, 4, 5, 32] {
            let prefix = &hash[..digits];
            let listed = index(&bucket, prefix);
            assert!(
                listed.iter().all(|(listed, _, _)| listed.starts_with(prefix)),
                "{prefix}"
            );
            let own: Vec<_> = listed.iter().filter(|(listed, _, _)| listed == &hash).collect();
            assert_eq!(
                own,
                [&(hash.clone(), 777, unix_nanos(marked))],
                "PrefixLength {prefix_length}, index prefix {prefix}"
            );
            assert_eq!(own[0].2 % 1_000_000_000, 0, "whole seconds, as keepstore prints them");
        }
    }
    // A PrefixLength 3 bucket reads the plain layout too (keepstore's isKeepBlock).
    let hash = md5_hex(b"x");
    assert_eq!(bucket(3).block_of(&hash), Some(hash.as_str()));
    assert_eq!(bucket(0).block_of(&format!("{}/{hash}", &hash[..3])), None);
}

#[test]
fn mtime_makes_the_marker_a_block_written_without_one_lacks() {
    let (bucket, client) = (bucket(0), plain());
    let data = fresh_block(500);
    let hash = md5_hex(&data);
    let (result, _) = in_ring(client.put(&hash, data, None));
    result.expect("put without a marker");
    let stored = modified(&client, &hash).expect("stored");
    let listed = index(&bucket, &hash);
    assert_eq!(
        listed,
        [(hash.clone(), 500, unix_nanos(stored))],
        "the object's own time"
    );
    assert_eq!(modified(&client, &format!("recent/{hash}")), None);
    let mtime = in_ring(bucket.mtime(&hash)).expect("mtime").expect("a block");
    assert_eq!(modified(&client, &format!("recent/{hash}")), Some(mtime), "marker made");
    let missing = md5_hex(&fresh_block(100));
    assert_eq!(in_ring(bucket.mtime(&missing)).expect("mtime"), None);
    assert_eq!(
        modified(&client, &format!("recent/{missing}")),
        None,
        "none for a missing block"
    );
}

#[test]
fn a_lifetime_of_zero_deletes_only_with_unsafe_delete() {
    let client = plain();
    let rules = trash_rules(DAY_SECS, 0);
    let later = SystemTime::now() + Duration::from_secs(2 * DAY_SECS);
    let safe = bucket(0);
    let hash = put(&safe, &fresh_block(300));
    let refused = in_ring(safe.trash(&hash, later, &rules, None));
    assert!(refused.is_err(), "trash is off: {refused:?}");
    assert_eq!(in_ring(safe.stat(&hash)).expect("stat"), Some(300), "nothing deleted");
    assert_eq!(modified(&client, &format!("trash/{hash}")), None, "nor trashed");
    let unsafe_delete = bucket_with(&S3Parameters {
        unsafe_delete: true,
        ..s3_parameters(0)
    });
    let deleted = in_ring(unsafe_delete.trash(&hash, later, &rules, None)).expect("delete");
    assert_eq!(deleted, TrashOutcome::Deleted);
    assert_eq!(in_ring(safe.stat(&hash)).expect("stat"), None);
    assert_eq!(
        modified(&client, &format!("trash/{hash}")),
        None,
        "deleted, not trashed"
    );
}

#[test]
fn a_block_whose_trash_copy_is_about_to_go_is_not_trashed_again() {
    let _trash = trash_state();
    let bucket = bucket_with(&S3Parameters {
        race_window: Duration::from_secs(DAY_SECS),
        ..s3_parameters(3)
    });
    let rules = trash_rules(DAY_SECS, 30 * DAY_SECS);
    let data = fresh_block(600);
    let hash = put(&bucket, &data);
    let in_two_days = SystemTime::now() + Duration::from_secs(2 * DAY_SECS);
    let trashed = in_ring(bucket.trash(&hash, in_two_days, &rules, None)).expect("trash");
    assert_eq!(trashed, TrashOutcome::Trashed);
    // Written again: its trash copy goes in 30 days, far outside the 1-day window.
    put(&bucket, &data);
    let again = in_ring(bucket.trash(&hash, in_two_days, &rules, None)).expect("trash again");
    assert_eq!(again, TrashOutcome::Trashed);
    // Written again, trashed when the copy goes within the window: refused.
    put(&bucket, &data);
    let late = SystemTime::now() + Duration::from_secs(29 * DAY_SECS + 12 * 3600);
    let refused = in_ring(bucket.trash(&hash, late, &rules, None));
    assert!(refused.is_err(), "inside the race window: {refused:?}");
    assert_eq!(in_ring(bucket.stat(&hash)).expect("stat"), Some(600), "the block stays");
}

#[test]
fn untrash_copies_back_and_marks_the_block_anew() {
    let _trash = trash_state();
    let (bucket, client) = (bucket(3), plain());
    let data = fresh_block(900);
    let hash = put(&bucket, &data);
    let key = bucket.key(&hash);
    let written = in_ring(bucket.mtime(&hash)).expect("mtime").expect("a block");
    std::thread::sleep(Duration::from_millis(1100));
    let later = SystemTime::now() + Duration::from_secs(2 * DAY_SECS);
    let trashed = in_ring(bucket.trash(&hash, later, &trash_rules(DAY_SECS, 3600), None)).expect("trash");
    assert_eq!(trashed, TrashOutcome::Trashed);
    assert!(in_ring(bucket.untrash(&hash)).expect("untrash"));
    assert_eq!(get(&bucket, &hash, Duration::ZERO).as_deref(), Some(&data[..]));
    let marked = in_ring(bucket.mtime(&hash)).expect("mtime").expect("a block");
    assert!(marked > written, "marked anew: {written:?} → {marked:?}");
    assert!(
        modified(&client, &format!("trash/{key}")).is_some(),
        "keepstore copies: the trash copy stays for the emptier"
    );
}

#[test]
fn a_read_restores_a_block_a_racing_trash_took() {
    let _trash = trash_state();
    let (bucket, client) = (bucket(3), plain());
    let data = fresh_block(1200);
    let hash = plant_a_race(&bucket, &client, &data);
    assert_eq!(
        get(&bucket, &hash, Duration::ZERO),
        None,
        "with a signing TTL of 0 the trash came after it: no race"
    );
    assert_eq!(in_ring(bucket.stat(&hash)).expect("stat"), None);
    assert_eq!(
        get(&bucket, &hash, Duration::from_secs(DAY_SECS)).as_deref(),
        Some(&data[..])
    );
    assert_eq!(in_ring(bucket.stat(&hash)).expect("stat"), Some(1200), "copied back");
    let unmarked_data = fresh_block(100);
    let unmarked = md5_hex(&unmarked_data);
    let key = bucket.key(&unmarked);
    in_ring(async {
        let (result, _) = client.put(&format!("trash/{key}"), unmarked_data, None).await;
        result.expect("plant a trash copy")
    });
    assert_eq!(
        get(&bucket, &unmarked, Duration::from_secs(DAY_SECS)),
        None,
        "no marker: not a race"
    );
}

#[test]
fn the_emptier_deletes_expired_trash_with_its_marker_and_keeps_younger_trash() {
    let _alone = trash_state_alone();
    let (bucket, client) = (bucket(3), plain());
    // A signing TTL of 0: no trash copy is a race, each is judged by its age alone.
    let rules = trash_rules(0, 3600);
    let trash = |data: &[u8]| {
        let hash = put(&bucket, data);
        let outcome = in_ring(bucket.trash(&hash, SystemTime::now(), &rules, None)).expect("trash");
        assert_eq!(outcome, TrashOutcome::Trashed);
        bucket.key(&hash)
    };
    let older = trash(&fresh_block(700));
    let older_at = modified(&client, &format!("trash/{older}")).expect("trash copy");
    // LastModified has whole seconds: 2.1 s apart, the pass below falls between them.
    std::thread::sleep(Duration::from_millis(2100));
    let younger = trash(&fresh_block(800));
    let now = older_at + Duration::from_secs(rules.lifetime_secs) + Duration::from_millis(1050);
    let counts: EmptyCounts = in_ring(bucket.empty_trash(now, &rules, 4, &|| true));
    assert!(counts.deleted >= 1 && counts.in_trash >= 2, "{counts:?}");
    assert_eq!(modified(&client, &format!("trash/{older}")), None, "expired: deleted");
    assert_eq!(modified(&client, &format!("recent/{older}")), None, "with its marker");
    assert!(
        modified(&client, &format!("trash/{younger}")).is_some(),
        "younger: kept"
    );
    assert!(
        modified(&client, &format!("recent/{younger}")).is_some(),
        "with its marker"
    );
}

#[test]
fn the_emptier_untrashes_a_copy_without_marker_and_fixes_a_recent_race() {
    let _alone = trash_state_alone();
    // A race window shorter than the signing TTL: a race whose marker is younger than
    // their difference is a recent one (the block is copied back, not touched).
    let bucket = bucket_with(&S3Parameters {
        race_window: Duration::from_secs(3600),
        ..s3_parameters(3)
    });
    let client = plain();
    let unmarked_data = fresh_block(1000);
    let unmarked = put(&bucket, &unmarked_data);
    let unmarked_key = bucket.key(&unmarked);
    in_ring(async {
        client
            .copy(&unmarked_key, &format!("trash/{unmarked_key}"))
            .await
            .expect("copy to trash");
        client.delete(&unmarked_key).await.expect("delete block");
        client
            .delete(&format!("recent/{unmarked_key}"))
            .await
            .expect("delete marker");
    });
    let raced_data = fresh_block(1100);
    let raced = plant_a_race(&bucket, &client, &raced_data);
    assert_eq!(in_ring(bucket.stat(&raced)).expect("stat"), None);
    let rules = trash_rules(DAY_SECS, 3600);
    let counts = in_ring(bucket.empty_trash(SystemTime::now(), &rules, 4, &|| true));
    assert!(counts.in_trash >= 2, "{counts:?}");
    assert_eq!(in_ring(bucket.stat(&unmarked)).expect("stat"), Some(1000), "untrashed");
    assert!(
        modified(&client, &format!("recent/{unmarked_key}")).is_some(),
        "and marked"
    );
    assert_eq!(in_ring(bucket.stat(&raced)).expect("stat"), Some(1100), "race fixed");
    assert_eq!(get(&bucket, &raced, Duration::ZERO).as_deref(), Some(&raced_data[..]));
}

#[test]
fn the_emptier_fixes_an_old_race_and_touches_the_block() {
    let _alone = trash_state_alone();
    let bucket = bucket_with(&S3Parameters {
        race_window: Duration::from_secs(3600),
        ..s3_parameters(0)
    });
    let client = plain();
    let data = fresh_block(1300);
    let raced = plant_a_race(&bucket, &client, &data);
    let marked = modified(&client, &format!("recent/{raced}")).expect("marker");
    std::thread::sleep(Duration::from_millis(1100));
    // A day on, the marker no longer protects the block through the race window: the
    // emptier copies it back and touches it rather than leave it to be trashed again.
    let rules = trash_rules(DAY_SECS, 30 * DAY_SECS);
    let a_day_on = SystemTime::now() + Duration::from_secs(DAY_SECS);
    let counts = in_ring(bucket.empty_trash(a_day_on, &rules, 4, &|| true));
    assert!(counts.in_trash >= 1, "{counts:?}");
    assert_eq!(
        get(&bucket, &raced, Duration::ZERO).as_deref(),
        Some(&data[..]),
        "copied back"
    );
    let touched = modified(&client, &format!("recent/{raced}")).expect("marker");
    assert!(touched > marked, "touched: {marked:?} → {touched:?}");
}

#[test]
fn the_probe_answers_on_the_store_and_fails_fast_on_a_closed_port() {
    in_ring(bucket(0).probe()).expect("probe of the live store");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let closed = bucket_with(&S3Parameters {
        endpoint: format!("http://127.0.0.1:{port}"),
        connect_timeout: Duration::from_secs(2),
        ..s3_parameters(0)
    });
    let started = Instant::now();
    let probed = in_ring(closed.probe());
    assert!(probed.is_err(), "{probed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_index_pages_through_every_block_in_order() {
    let bucket = bucket_with(&S3Parameters {
        index_page_size: 2,
        ..s3_parameters(0)
    });
    // Five blocks under one 4-digit prefix no other test's blocks are likely to share.
    let first = fresh_block(64);
    let prefix = md5_hex(&first)[..4].to_string();
    let mut blocks = vec![first];
    while blocks.len() < 5 {
        let candidate = fresh_block(64);
        if md5_hex(&candidate).starts_with(&prefix) {
            blocks.push(candidate);
        }
    }
    let mut hashes: Vec<String> = blocks.iter().map(|data| put(&bucket, data)).collect();
    hashes.sort();
    let pages = index_pages(&bucket, &prefix);
    assert!(
        pages.len() >= 3 && pages.iter().all(|page| page.len() <= 2),
        "{pages:?}"
    );
    let own: Vec<(String, u64)> = pages
        .into_iter()
        .flatten()
        .filter(|(hash, _, mtime_ns)| hashes.contains(hash) && *mtime_ns > 0)
        .map(|(hash, size, _)| (hash, size))
        .collect();
    let expected: Vec<(String, u64)> = hashes.into_iter().map(|hash| (hash, 64)).collect();
    assert_eq!(own, expected, "every block once, in key order, each with its size");
}
