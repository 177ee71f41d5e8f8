//! MD5 throughput of keepring's multi-lane kernels against one-stream MD5 (issue 16):
//!
//! ```sh
//! cargo bench --bench md5lanes                    # about two minutes
//! MD5_BENCH_REPEATS=9 cargo bench --bench md5lanes
//! cargo bench --bench md5lanes -- "4 KiB"   # only the cases whose name has this
//! ```
//!
//! Prints the CPU model and its SIMD flags, then the median GB/s (10^9 bytes/s, with the
//! lowest and highest of the repeats) of: OpenSSL EVP (`digest::BlockDigest`, what
//! keepring runs today), OpenSSL's block function resumed from a raw state
//! (`SingleStream::OpenSsl`, the lone-stream path) and md-5, one stream of 64 MiB; each
//! kernel at 1–32 streams of 64 MiB (distinct buffers, so the data comes from memory as a
//! GET's page-cache copy does); and batches of 1–64 independent 4 KiB messages hashed to
//! their digests (fresh `LaneState`s, `finish` included), the small-GET case.
//!
//! Not criterion: a case here is one pass over up to 2 GiB, and the point is a table of
//! GB/s medians taken in interleaved repeats (every case once per repeat, so a burst of
//! other work on a shared machine lands on all cases alike rather than on one). Rates are
//! bytes per second of this thread's CPU time, not wall time, so other processes' time
//! slices do not count; their cache and memory-bandwidth pressure still does.

use std::hint::black_box;

use keepring::digest::BlockDigest;
use keepring::md5lanes::{Kernel, LaneState, SingleStream};
use md5::Digest;

const BIG_BYTES: usize = 64 << 20;
const SMALL_BYTES: usize = 4096;
const SMALL_MESSAGES: usize = 64;
/// Passes over the 64 small messages per timed sample, so a sample lasts milliseconds.
const SMALL_PASSES: usize = 400;

struct Case {
    name: String,
    run: Box<dyn FnMut() -> usize>,
    gigabytes_per_second: Vec<f64>,
}

fn case(name: impl Into<String>, run: impl FnMut() -> usize + 'static) -> Case {
    Case {
        name: name.into(),
        run: Box::new(run),
        gigabytes_per_second: Vec::new(),
    }
}

fn buffers(count: usize, bytes: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|buffer| {
            (0..bytes)
                .map(|i| (i.wrapping_mul(31) ^ buffer.wrapping_mul(131)) as u8)
                .collect()
        })
        .collect()
}

/// Hashes each buffer as one stream with one batch call, then finishes them.
fn batch(kernel: Kernel, buffers: &[Vec<u8>]) -> usize {
    let mut states = vec![LaneState::new(); buffers.len()];
    let mut jobs: Vec<(&mut LaneState, &[u8])> = states
        .iter_mut()
        .zip(buffers)
        .map(|(state, buffer)| (state, buffer.as_slice()))
        .collect();
    kernel.update_batch(&mut jobs);
    for state in &states {
        black_box(state.finish());
    }
    buffers.iter().map(Vec::len).sum()
}

fn big_cases(kernels: &[Kernel]) -> Vec<Case> {
    let one = std::rc::Rc::new(buffers(1, BIG_BYTES));
    let mut cases = Vec::new();
    let data = one.clone();
    cases.push(case("1 x 64 MiB  openssl evp (BlockDigest)", move || {
        let mut digest = BlockDigest::default();
        digest.update(&data[0]);
        black_box(digest.hex());
        BIG_BYTES
    }));
    for engine in SingleStream::available() {
        let data = one.clone();
        cases.push(case(format!("1 x 64 MiB  {} raw state", engine.name()), move || {
            let mut state = LaneState::new();
            state.update_with(engine, &data[0]);
            black_box(state.finish_with(engine));
            BIG_BYTES
        }));
    }
    let data = one.clone();
    cases.push(case("1 x 64 MiB  md-5 Md5::digest", move || {
        black_box(md5::Md5::digest(&data[0]));
        BIG_BYTES
    }));
    let many = std::rc::Rc::new(buffers(32, BIG_BYTES));
    for &kernel in kernels {
        let counts: &[usize] = if kernel == Kernel::Scalar {
            &[1, 4]
        } else {
            &[1, 2, 4, 8, 16, 24, 32]
        };
        for &streams in counts {
            let data = many.clone();
            cases.push(case(format!("{streams} x 64 MiB  {}", kernel.name()), move || {
                batch(kernel, &data[..streams])
            }));
        }
    }
    cases
}

fn small_cases(kernels: &[Kernel]) -> Vec<Case> {
    let data = std::rc::Rc::new(buffers(SMALL_MESSAGES, SMALL_BYTES));
    let mut cases = Vec::new();
    let messages = data.clone();
    cases.push(case("64 x 4 KiB  openssl evp, one by one", move || {
        for _ in 0..SMALL_PASSES {
            for message in messages.iter() {
                let mut digest = BlockDigest::default();
                digest.update(message);
                black_box(digest.hex());
            }
        }
        SMALL_PASSES * SMALL_MESSAGES * SMALL_BYTES
    }));
    for engine in SingleStream::available() {
        let messages = data.clone();
        cases.push(case(
            format!("64 x 4 KiB  {} raw state, one by one", engine.name()),
            move || {
                for _ in 0..SMALL_PASSES {
                    for message in messages.iter() {
                        let mut state = LaneState::new();
                        state.update_with(engine, message);
                        black_box(state.finish_with(engine));
                    }
                }
                SMALL_PASSES * SMALL_MESSAGES * SMALL_BYTES
            },
        ));
    }
    for &kernel in kernels {
        let counts: &[usize] = if kernel == Kernel::Scalar {
            &[64]
        } else {
            &[4, 8, 16, 32, 64]
        };
        for &per_batch in counts {
            let messages = data.clone();
            cases.push(case(
                format!("64 x 4 KiB  {}, {per_batch} per batch", kernel.name()),
                move || {
                    let mut bytes = 0;
                    for _ in 0..SMALL_PASSES {
                        for group in messages.chunks(per_batch) {
                            bytes += batch(kernel, group);
                        }
                    }
                    bytes
                },
            ));
        }
    }
    cases
}

/// CPU time of this thread: on a machine shared with other work, the time the core
/// actually spent here (wall time would also count other processes' time slices).
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "CLOCK_THREAD_CPUTIME_ID is always present on Linux");
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

fn measure(cases: &mut [Case], repeats: usize) {
    for case in cases.iter_mut() {
        (case.run)(); // warm-up: page faults, frequency
    }
    for _ in 0..repeats {
        for case in cases.iter_mut() {
            let started = thread_cpu_seconds();
            let bytes = (case.run)();
            case.gigabytes_per_second
                .push(bytes as f64 / (thread_cpu_seconds() - started) / 1e9);
        }
    }
    for case in cases.iter_mut() {
        case.gigabytes_per_second.sort_by(f64::total_cmp);
        let rates = &case.gigabytes_per_second;
        println!(
            "{:<44} {:>7.2} GB/s   ({:.2}–{:.2})",
            case.name,
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1]
        );
    }
}

fn print_cpu() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|flag| flag.starts_with("avx") || flag.starts_with("sse4"))
        .collect();
    println!(
        "cpu: {} ({} logical cores)",
        field("model name"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("simd flags: {}", simd.join(" "));
    println!(
        "kernels: {} (best: {}, {} lanes); lone stream: {}",
        Kernel::ALL
            .iter()
            .filter(|kernel| kernel.is_available())
            .map(|kernel| kernel.name())
            .collect::<Vec<_>>()
            .join(", "),
        Kernel::best().name(),
        Kernel::best().lanes(),
        SingleStream::best().name()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; another argument keeps only the cases whose name
    // contains it (`cargo bench --bench md5lanes -- "4 KiB"`).
    let filter = std::env::args()
        .skip(1)
        .find(|argument| !argument.starts_with('-'))
        .unwrap_or_default();
    let repeats = std::env::var("MD5_BENCH_REPEATS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|kernel| kernel.is_available()).collect();
    print_cpu();
    println!("medians of {repeats} interleaved repeats (lowest–highest); GB = 10^9 bytes");
    for cases in [small_cases(&kernels), big_cases(&kernels)] {
        let mut cases: Vec<Case> = cases.into_iter().filter(|case| case.name.contains(&filter)).collect();
        measure(&mut cases, repeats);
    }
}
