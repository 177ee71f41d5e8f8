//! Criterion micro benchmarks of the pure pieces on keepring's request path (issue 7):
//! locator parsing + permission signature check, request head parsing, MD5 per chunk size
//! and rendezvous placement. Short on purpose (about 1 s of measurement per benchmark):
//!
//! ```sh
//! cargo bench --bench micro              # everything, about a minute
//! cargo bench --bench micro -- md5       # one group
//! ```
//!
//! `scripts/bench.sh` runs `md5/.*/1048576` and uses `md5/blockdigest/1048576` (the MD5
//! keepring runs) as the single-core MD5 reference for the PUT and big-GET rates.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use keepring::digest::BlockDigest;
use keepring::http::request::parse_head;
use keepring::locator::Locator;
use keepring::signature::SigningKey;
use keepring::volume::Volume;
use keepring::volumes::placement;

const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";
const TOKEN: &str = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi";
const NOW: u64 = 1_700_000_000;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .without_plots()
}

/// `Locator::parse` alone, and parse + `SigningKey::verify` of a signed locator as a
/// signed GET does it (HMAC-SHA1 over hash@token@expiry@ttl).
fn locator(c: &mut Criterion) {
    let key = SigningKey::new(b"an-arbitrary-blob-signing-key-of-some-length", 1_209_600);
    let signed = format!("{HASH}+67108864{}", key.sign_hint(HASH, TOKEN, NOW));
    let with_other_hints = format!("{signed}+Kzzzzz+Ezzzzz-4zz18-abcdefghijklmno");
    let bare = format!("{HASH}+4096");

    let mut group = c.benchmark_group("locator");
    group.bench_function("parse/hash+size", |b| {
        b.iter(|| Locator::parse(black_box(&bare)).unwrap())
    });
    group.bench_function("parse/signed", |b| {
        b.iter(|| Locator::parse(black_box(&signed)).unwrap())
    });
    group.bench_function("parse+verify/signed", |b| {
        b.iter(|| {
            let locator = Locator::parse(black_box(&signed)).unwrap();
            key.verify(&locator, black_box(TOKEN), NOW).unwrap()
        })
    });
    group.bench_function("parse+verify/signed+hints", |b| {
        b.iter(|| {
            let locator = Locator::parse(black_box(&with_other_hints)).unwrap();
            key.verify(&locator, black_box(TOKEN), NOW).unwrap()
        })
    });
    group.bench_function("parse+verify/wrong-token", |b| {
        b.iter(|| {
            let locator = Locator::parse(black_box(&signed)).unwrap();
            key.verify(&locator, black_box("not-the-token"), NOW).unwrap_err()
        })
    });
    group.finish();
}

/// `parse_head` on the heads the Arvados SDKs send for a signed GET and a PUT.
fn request_head(c: &mut Criterion) {
    let key = SigningKey::new(b"an-arbitrary-blob-signing-key-of-some-length", 1_209_600);
    let get = format!(
        "GET /{HASH}+67108864{hint} HTTP/1.1\r\n\
         Host: keep0.zzzzz.arvadosapi.com:25107\r\n\
         User-Agent: Python-urllib3 arvados-python-client/3.1.0\r\n\
         Accept: */*\r\n\
         Accept-Encoding: identity\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         X-Request-Id: req-8ys1hy8fo1f3b2cq5gyd\r\n\
         Connection: keep-alive\r\n\r\n",
        hint = key.sign_hint(HASH, TOKEN, NOW)
    );
    let put = format!(
        "PUT /{HASH} HTTP/1.1\r\n\
         Host: keep0.zzzzz.arvadosapi.com:25107\r\n\
         User-Agent: Python-urllib3 arvados-python-client/3.1.0\r\n\
         Accept: */*\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         X-Request-Id: req-8ys1hy8fo1f3b2cq5gyd\r\n\
         X-Keep-Desired-Replicas: 2\r\n\
         X-Keep-Storage-Classes: default\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Length: 67108864\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    let minimal = format!("GET /{HASH}+4096 HTTP/1.1\r\nHost: 127.0.0.1:25107\r\n\r\n");

    let mut group = c.benchmark_group("parse_head");
    for (name, head) in [("get-sdk", &get), ("put-sdk", &put), ("get-minimal", &minimal)] {
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_head(black_box(head.as_bytes())).unwrap().unwrap())
        });
    }
    group.finish();
}

/// `BlockDigest::update` per chunk size, for the engine keepring uses (`default()`: OpenSSL's
/// MD5, md-5 where OpenSSL refuses MD5) and for the portable md-5 one; throughput in bytes.
fn md5(c: &mut Criterion) {
    let mut group = c.benchmark_group("md5");
    for size in [4 << 10, 64 << 10, 512 << 10, 1 << 20] {
        let data: Vec<u8> = (0..size)
            .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        for (engine, make) in [
            ("blockdigest", BlockDigest::default as fn() -> BlockDigest),
            ("portable", BlockDigest::portable),
        ] {
            group.bench_with_input(BenchmarkId::new(engine, size), &data, |b, data| {
                let mut digest = make();
                b.iter(|| digest.update(black_box(data)))
            });
        }
    }
    group.finish();
}

/// `placement::order` (one MD5 per volume plus a sort) for 2, 8 and 32 volumes. The
/// volumes are opened on temp directories through the public constructor (each gets a
/// stored random UUID, as a real volume does), so this file does not depend on the
/// struct's private fields.
fn placement(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("placement");
    for count in [2, 8, 32] {
        let volumes: Vec<Box<Volume>> = (0..count)
            .map(|i| Box::new(Volume::open_directory(&dir.path().join(format!("v{count}-{i}"))).expect("volume")))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(count), &volumes, |b, volumes| {
            b.iter(|| placement::order(black_box(HASH), volumes))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = locator, request_head, md5, placement
}
criterion_main!(benches);
