//! Multi-lane MD5: many independent MD5 streams advanced together, one stream per 32-bit
//! SIMD lane (16 with AVX-512F, 8 with AVX2), as Intel ISA-L's `md5_mb` and MinIO's
//! `md5-simd` do (issue 16). One stream cannot go faster than the chain of its 64 steps per
//! block, but a core has room for many chains at once.
//!
//! This module owns the MD5 arithmetic and the grouping of streams into lanes; it does
//! not own when streams are gathered (that is the per-core hasher's job, which hands
//! `update_batch` whatever chunks are pending in one ring tick) nor the hex names of
//! blocks (`digest.rs`). It is plain Rust with no runtime, unit-tested against md-5 and
//! OpenSSL for every kernel the CPU has.
//!
//! - `LaneState` is one stream: four state words, the length so far and up to 63 bytes
//!   not yet a whole block. `finish` pads and returns the digest (RFC 1321 §3.1–3.5).
//! - `Kernel` is chosen once at start (`Kernel::detect`, which honours
//!   `KEEPRING_MD5_KERNEL=avx512|avx2|scalar` so tests and operators can force a
//!   fallback) and advances a batch: streams with whole blocks share rounds of the
//!   kernel's width; a stream left alone takes the single-stream path (`scalar.rs`,
//!   OpenSSL's block function), which is faster than one busy lane of a wide kernel.
//!
//! Measured with `cargo bench --bench md5lanes` (Xeon with AVX-512, GB/s per second of
//! thread CPU time, medians of 5 interleaved repeats on a machine shared with builds):
//! one stream 0.48 (OpenSSL) and 0.42 (md-5); AVX-512 at 2 / 8 / 16 / 32 streams of
//! 64 MiB 0.78 / 3.08 / 4.79 / 5.34, so a lone busy lane would run at ~0.39, below
//! OpenSSL, while two streams already beat it; 64 messages of 4 KiB 5.6 against 0.42 for
//! OpenSSL EVP one by one (13×). AVX2 tops out at 8 streams, 2.6.

use std::fmt;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

pub use scalar::SingleStream;

/// An MD5 block (RFC 1321 §3.4 processes the message in 16-word blocks).
pub const BLOCK_BYTES: usize = 64;

/// Lanes of each SIMD kernel: 32-bit elements of a zmm and of a ymm register.
pub const AVX512_LANES: usize = 16;
pub const AVX2_LANES: usize = 8;

/// Streams from which AVX-512 rounds run two 16-lane chains at once (32 lanes). Measured
/// (benches/md5lanes.rs, 4 KiB messages in cache): a paired round costs 1.66 single
/// rounds (2 × 5.27 / 6.34 GB/s), so with n streams pairing beats 16-lane turns (n / 16
/// rounds) from n = 27; 28 leaves a margin. Over 64 MiB buffers memory bounds both (32
/// streams 4.65 GB/s, 16 streams 4.67), so pairing neither helps nor hurts there.
const AVX512_PAIR_STREAMS_MIN: usize = 28;

/// The environment variable that forces a kernel (`avx512`, `avx2` or `scalar`).
pub const KERNEL_ENV: &str = "KEEPRING_MD5_KERNEL";

/// Shortest round given to the longest streams while others wait for a lane: with more
/// streams than lanes they take turns, so the last rounds stay full rather than leaving one
/// stream alone. A turn of 64 blocks (4 KiB per lane) keeps a round's overhead (sorting
/// the lanes, loading and storing 16 states) to a few percent of its hashing; 16-block
/// turns measured 10% slower at 32 streams of 64 MiB.
const TURN_BLOCKS_MIN: usize = 64;

/// MD5's initial state words A, B, C, D (RFC 1321 §3.3).
const STATE_INITIAL: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// What a lane with no stream reads while the others work; its result is thrown away.
static FILLER_BLOCK: [u8; BLOCK_BYTES] = [0; BLOCK_BYTES];

/// Expands the 64 steps of one MD5 block (RFC 1321 §3.4) with each kernel's own `$step`:
/// round function, the four registers in their rotating order, message word, additive
/// constant `K[i] = floor(2^32 * |sin(i + 1)|)` and left rotation. The rotation must be a
/// literal because the vector rotate and shift instructions take it as an immediate.
macro_rules! md5_rounds {
    ($step:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:ident) => {
        $step!(F, $a, $b, $c, $d, $m[0], 0xd76aa478, 7);
        $step!(F, $d, $a, $b, $c, $m[1], 0xe8c7b756, 12);
        $step!(F, $c, $d, $a, $b, $m[2], 0x242070db, 17);
        $step!(F, $b, $c, $d, $a, $m[3], 0xc1bdceee, 22);
        $step!(F, $a, $b, $c, $d, $m[4], 0xf57c0faf, 7);
        $step!(F, $d, $a, $b, $c, $m[5], 0x4787c62a, 12);
        $step!(F, $c, $d, $a, $b, $m[6], 0xa8304613, 17);
        $step!(F, $b, $c, $d, $a, $m[7], 0xfd469501, 22);
        $step!(F, $a, $b, $c, $d, $m[8], 0x698098d8, 7);
        $step!(F, $d, $a, $b, $c, $m[9], 0x8b44f7af, 12);
        $step!(F, $c, $d, $a, $b, $m[10], 0xffff5bb1, 17);
        $step!(F, $b, $c, $d, $a, $m[11], 0x895cd7be, 22);
        $step!(F, $a, $b, $c, $d, $m[12], 0x6b901122, 7);
        $step!(F, $d, $a, $b, $c, $m[13], 0xfd987193, 12);
        $step!(F, $c, $d, $a, $b, $m[14], 0xa679438e, 17);
        $step!(F, $b, $c, $d, $a, $m[15], 0x49b40821, 22);
        $step!(G, $a, $b, $c, $d, $m[1], 0xf61e2562, 5);
        $step!(G, $d, $a, $b, $c, $m[6], 0xc040b340, 9);
        $step!(G, $c, $d, $a, $b, $m[11], 0x265e5a51, 14);
        $step!(G, $b, $c, $d, $a, $m[0], 0xe9b6c7aa, 20);
        $step!(G, $a, $b, $c, $d, $m[5], 0xd62f105d, 5);
        $step!(G, $d, $a, $b, $c, $m[10], 0x02441453, 9);
        $step!(G, $c, $d, $a, $b, $m[15], 0xd8a1e681, 14);
        $step!(G, $b, $c, $d, $a, $m[4], 0xe7d3fbc8, 20);
        $step!(G, $a, $b, $c, $d, $m[9], 0x21e1cde6, 5);
        $step!(G, $d, $a, $b, $c, $m[14], 0xc33707d6, 9);
        $step!(G, $c, $d, $a, $b, $m[3], 0xf4d50d87, 14);
        $step!(G, $b, $c, $d, $a, $m[8], 0x455a14ed, 20);
        $step!(G, $a, $b, $c, $d, $m[13], 0xa9e3e905, 5);
        $step!(G, $d, $a, $b, $c, $m[2], 0xfcefa3f8, 9);
        $step!(G, $c, $d, $a, $b, $m[7], 0x676f02d9, 14);
        $step!(G, $b, $c, $d, $a, $m[12], 0x8d2a4c8a, 20);
        $step!(H, $a, $b, $c, $d, $m[5], 0xfffa3942, 4);
        $step!(H, $d, $a, $b, $c, $m[8], 0x8771f681, 11);
        $step!(H, $c, $d, $a, $b, $m[11], 0x6d9d6122, 16);
        $step!(H, $b, $c, $d, $a, $m[14], 0xfde5380c, 23);
        $step!(H, $a, $b, $c, $d, $m[1], 0xa4beea44, 4);
        $step!(H, $d, $a, $b, $c, $m[4], 0x4bdecfa9, 11);
        $step!(H, $c, $d, $a, $b, $m[7], 0xf6bb4b60, 16);
        $step!(H, $b, $c, $d, $a, $m[10], 0xbebfbc70, 23);
        $step!(H, $a, $b, $c, $d, $m[13], 0x289b7ec6, 4);
        $step!(H, $d, $a, $b, $c, $m[0], 0xeaa127fa, 11);
        $step!(H, $c, $d, $a, $b, $m[3], 0xd4ef3085, 16);
        $step!(H, $b, $c, $d, $a, $m[6], 0x04881d05, 23);
        $step!(H, $a, $b, $c, $d, $m[9], 0xd9d4d039, 4);
        $step!(H, $d, $a, $b, $c, $m[12], 0xe6db99e5, 11);
        $step!(H, $c, $d, $a, $b, $m[15], 0x1fa27cf8, 16);
        $step!(H, $b, $c, $d, $a, $m[2], 0xc4ac5665, 23);
        $step!(I, $a, $b, $c, $d, $m[0], 0xf4292244, 6);
        $step!(I, $d, $a, $b, $c, $m[7], 0x432aff97, 10);
        $step!(I, $c, $d, $a, $b, $m[14], 0xab9423a7, 15);
        $step!(I, $b, $c, $d, $a, $m[5], 0xfc93a039, 21);
        $step!(I, $a, $b, $c, $d, $m[12], 0x655b59c3, 6);
        $step!(I, $d, $a, $b, $c, $m[3], 0x8f0ccc92, 10);
        $step!(I, $c, $d, $a, $b, $m[10], 0xffeff47d, 15);
        $step!(I, $b, $c, $d, $a, $m[1], 0x85845dd1, 21);
        $step!(I, $a, $b, $c, $d, $m[8], 0x6fa87e4f, 6);
        $step!(I, $d, $a, $b, $c, $m[15], 0xfe2ce6e0, 10);
        $step!(I, $c, $d, $a, $b, $m[6], 0xa3014314, 15);
        $step!(I, $b, $c, $d, $a, $m[13], 0x4e0811a1, 21);
        $step!(I, $a, $b, $c, $d, $m[4], 0xf7537e82, 6);
        $step!(I, $d, $a, $b, $c, $m[11], 0xbd3af235, 10);
        $step!(I, $c, $d, $a, $b, $m[2], 0x2ad7d2bb, 15);
        $step!(I, $b, $c, $d, $a, $m[9], 0xeb86d391, 21);
    };
}
use md5_rounds;

/// One MD5 stream: what a request keeps between chunks.
#[derive(Clone, Debug)]
pub struct LaneState {
    state: [u32; 4],
    length_bytes: u64,
    tail: [u8; BLOCK_BYTES],
    tail_bytes: usize,
}

impl Default for LaneState {
    fn default() -> Self {
        LaneState {
            state: STATE_INITIAL,
            length_bytes: 0,
            tail: [0; BLOCK_BYTES],
            tail_bytes: 0,
        }
    }
}

impl LaneState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes fed so far.
    pub fn length_bytes(&self) -> u64 {
        self.length_bytes
    }

    /// Feeds `bytes` on the single-stream path (the batch of one).
    pub fn update(&mut self, bytes: &[u8]) {
        self.update_with(SingleStream::best(), bytes);
    }

    /// `update` on a chosen engine (tests and benchmarks compare them).
    pub fn update_with(&mut self, engine: SingleStream, bytes: &[u8]) {
        let (tail_block, body, rest) = self.absorb(bytes);
        if let Some(block) = tail_block {
            engine.compress(&mut self.state, &[block]);
        }
        engine.compress(&mut self.state, body);
        self.keep_tail(rest);
    }

    /// The digest of everything fed so far; the stream may go on afterwards.
    pub fn finish(&self) -> [u8; 16] {
        self.finish_with(SingleStream::best())
    }

    /// `finish` on a chosen engine.
    pub fn finish_with(&self, engine: SingleStream) -> [u8; 16] {
        let mut padded = self.clone();
        let (padding, length) = self.padding();
        padded.update_with(engine, &padding[..length]);
        padded.digest_after_padding()
    }

    /// The bytes that end the message fed so far (RFC 1321 §3.1–3.2: a 1 bit, zeros up
    /// to 56 bytes mod 64, the bit length mod 2^64) and how many there are: fed to this
    /// stream (alone or in a batch), they leave its digest in the state words, which
    /// `digest_after_padding` reads. So a batch can finish many streams in its lanes.
    pub fn padding(&self) -> ([u8; 2 * BLOCK_BYTES], usize) {
        let mut padding = [0u8; 2 * BLOCK_BYTES];
        let length = match self.tail_bytes < 56 {
            true => BLOCK_BYTES - self.tail_bytes,
            false => 2 * BLOCK_BYTES - self.tail_bytes,
        };
        padding[0] = 0x80;
        let bit_length = self.length_bytes.wrapping_mul(8);
        padding[length - 8..length].copy_from_slice(&bit_length.to_le_bytes());
        (padding, length)
    }

    /// The digest in the state words of a stream its `padding` was fed to.
    pub fn digest_after_padding(&self) -> [u8; 16] {
        debug_assert_eq!(self.tail_bytes, 0, "the padding ends on a block boundary");
        let mut digest = [0u8; 16];
        for (bytes, word) in digest.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        digest
    }

    /// Counts `bytes` in and splits them: the buffered tail if they complete it, the whole
    /// blocks that follow, and the rest (under a block) for `keep_tail` once the blocks
    /// before it are hashed.
    fn absorb<'a>(&mut self, bytes: &'a [u8]) -> (Option<[u8; BLOCK_BYTES]>, &'a [[u8; BLOCK_BYTES]], &'a [u8]) {
        self.length_bytes = self.length_bytes.wrapping_add(bytes.len() as u64);
        let mut bytes = bytes;
        let mut tail_block = None;
        if self.tail_bytes > 0 {
            let taken = bytes.len().min(BLOCK_BYTES - self.tail_bytes);
            self.tail[self.tail_bytes..self.tail_bytes + taken].copy_from_slice(&bytes[..taken]);
            self.tail_bytes += taken;
            bytes = &bytes[taken..];
            if self.tail_bytes < BLOCK_BYTES {
                return (None, &[], &[]);
            }
            self.tail_bytes = 0;
            tail_block = Some(self.tail);
        }
        let (body, rest) = bytes.as_chunks::<BLOCK_BYTES>();
        (tail_block, body, rest)
    }

    fn keep_tail(&mut self, rest: &[u8]) {
        debug_assert!(rest.is_empty() || self.tail_bytes == 0);
        debug_assert!(rest.len() < BLOCK_BYTES);
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_bytes += rest.len();
    }
}

/// The code that advances many lanes at once, chosen once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// 16 lanes in zmm registers; `vpternlogd` is each round function, `vprold` the rotate.
    Avx512,
    /// 8 lanes in ymm registers.
    Avx2,
    /// One stream after another on the single-stream path.
    Scalar,
}

/// Why a forced kernel cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    Unknown(String),
    Unsupported(Kernel),
}

impl fmt::Display for KernelError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Unknown(name) => {
                write!(
                    formatter,
                    "{KERNEL_ENV}={name:?} names no MD5 kernel (avx512, avx2, scalar)"
                )
            }
            KernelError::Unsupported(kernel) => write!(
                formatter,
                "{KERNEL_ENV}={} asks for an MD5 kernel this CPU cannot run (it lacks {})",
                kernel.name(),
                kernel.cpu_feature()
            ),
        }
    }
}

impl std::error::Error for KernelError {}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar];

    /// The widest kernel the CPU runs, unless `KEEPRING_MD5_KERNEL` forces one; a forced
    /// kernel the CPU lacks is an error rather than a silent fallback.
    pub fn detect() -> Result<Kernel, KernelError> {
        Kernel::from_setting(std::env::var(KERNEL_ENV).ok().as_deref())
    }

    /// What `detect` decides for a value of `KEEPRING_MD5_KERNEL` (unset or empty: best).
    fn from_setting(setting: Option<&str>) -> Result<Kernel, KernelError> {
        match setting {
            Some(name) if !name.is_empty() => Kernel::from_name(name),
            _ => Ok(Kernel::best()),
        }
    }

    pub fn best() -> Kernel {
        Kernel::ALL
            .into_iter()
            .find(|kernel| kernel.is_available())
            .unwrap_or(Kernel::Scalar)
    }

    /// The kernel called `name`, if this CPU can run it.
    pub fn from_name(name: &str) -> Result<Kernel, KernelError> {
        let kernel = Kernel::ALL
            .into_iter()
            .find(|kernel| kernel.name() == name)
            .ok_or_else(|| KernelError::Unknown(name.to_string()))?;
        if kernel.is_available() {
            Ok(kernel)
        } else {
            Err(KernelError::Unsupported(kernel))
        }
    }

    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => false,
            Kernel::Scalar => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }

    fn cpu_feature(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512f",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "nothing",
        }
    }

    /// Streams advanced by one round.
    pub fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => AVX512_LANES,
            Kernel::Avx2 => AVX2_LANES,
            Kernel::Scalar => 1,
        }
    }

    /// Feeds each job's bytes to its stream, as `state.update(bytes)` for each would, but
    /// sharing the kernel's lanes between streams.
    pub fn update_batch(self, jobs: &mut [(&mut LaneState, &[u8])]) {
        self.update_batch_with(SingleStream::best(), jobs);
    }

    /// `update_batch` with a chosen lone-stream engine.
    pub fn update_batch_with(self, engine: SingleStream, jobs: &mut [(&mut LaneState, &[u8])]) {
        let mut tail_blocks = Vec::new();
        let mut bodies = Vec::with_capacity(jobs.len());
        let mut rests = Vec::with_capacity(jobs.len());
        for (job, (state, bytes)) in jobs.iter_mut().enumerate() {
            let (tail_block, body, rest) = state.absorb(bytes);
            if let Some(block) = tail_block {
                tail_blocks.push((job, block));
            }
            bodies.push(Lane { job, blocks: body });
            rests.push(rest);
        }
        // A completed tail block comes before the blocks that follow it in the same stream.
        let mut tails: Vec<Lane> = tail_blocks
            .iter()
            .map(|(job, block)| Lane {
                job: *job,
                blocks: std::slice::from_ref(block),
            })
            .collect();
        self.advance(engine, jobs, &mut tails);
        self.advance(engine, jobs, &mut bodies);
        for ((state, _), rest) in jobs.iter_mut().zip(rests) {
            state.keep_tail(rest);
        }
    }

    /// Hashes every lane's blocks into its job's state: the longest streams first, a
    /// kernel's width at a time, until at most one stream is left for the single path.
    fn advance(self, engine: SingleStream, jobs: &mut [(&mut LaneState, &[u8])], lanes: &mut Vec<Lane>) {
        loop {
            lanes.retain(|lane| !lane.blocks.is_empty());
            let width = self.round_width(lanes.len());
            if lanes.len() <= 1 || width == 1 {
                for lane in lanes.iter() {
                    engine.compress(&mut jobs[lane.job].0.state, lane.blocks);
                }
                return;
            }
            lanes.sort_unstable_by_key(|lane| std::cmp::Reverse(lane.blocks.len()));
            let chosen = lanes.len().min(width);
            let blocks = round_blocks(lanes, chosen);
            self.round(jobs, &mut lanes[..chosen], blocks);
        }
    }

    /// Streams one round takes when `streams` have blocks left: AVX-512 runs two 16-lane
    /// chains side by side once there are enough streams to fill most of both.
    fn round_width(self, streams: usize) -> usize {
        match self {
            Kernel::Avx512 if streams >= AVX512_PAIR_STREAMS_MIN => 2 * AVX512_LANES,
            _ => self.lanes(),
        }
    }

    /// Runs `blocks` blocks of each of `lanes` (at most the kernel's width) in one call.
    fn round(self, jobs: &mut [(&mut LaneState, &[u8])], lanes: &mut [Lane], blocks: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if lanes.len() > AVX512_LANES => {
                let (mut states, messages) = gather::<{ 2 * AVX512_LANES }>(jobs, lanes, blocks);
                // SAFETY: checked just below (a cached flag load): the enum is public, so a
                // hand-built `Kernel::Avx512` on a CPU without it must stop, not run. Also
                // `Kernel::Avx512` runs only where `is_available` saw avx512f:
                // `detect`/`from_name` check it, and `best` picks only available kernels.
                assert!(self.is_available(), "an MD5 kernel this CPU lacks");
                unsafe { avx512::compress::<2>(&mut states, &messages, blocks) };
                scatter(jobs, lanes, &states, blocks);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                let (mut states, messages) = gather::<AVX512_LANES>(jobs, lanes, blocks);
                // SAFETY: as above.
                assert!(self.is_available(), "an MD5 kernel this CPU lacks");
                unsafe { avx512::compress::<1>(&mut states, &messages, blocks) };
                scatter(jobs, lanes, &states, blocks);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                let (mut states, messages) = gather::<AVX2_LANES>(jobs, lanes, blocks);
                // SAFETY: as above, `Kernel::Avx2` is only in hand where avx2 was detected.
                assert!(self.is_available(), "an MD5 kernel this CPU lacks");
                unsafe { avx2::compress(&mut states, &messages, blocks) };
                scatter(jobs, lanes, &states, blocks);
            }
            _ => {
                for lane in lanes.iter_mut() {
                    md5::block_api::compress(&mut jobs[lane.job].0.state, &lane.blocks[..blocks]);
                    lane.blocks = &lane.blocks[blocks..];
                }
            }
        }
    }
}

/// A stream's blocks still to hash, and which job it is.
struct Lane<'a> {
    job: usize,
    blocks: &'a [[u8; BLOCK_BYTES]],
}

/// Blocks for a round of the `chosen` longest lanes (sorted longest first): all the
/// shortest of them has when every stream fits, else down to the longest one waiting, but
/// at least a turn's worth, so waiting streams get a lane soon and rounds stay long.
fn round_blocks(lanes: &[Lane], chosen: usize) -> usize {
    let shortest_chosen = lanes[chosen - 1].blocks.len();
    match lanes.get(chosen) {
        None => shortest_chosen,
        Some(waiting) => (shortest_chosen - waiting.blocks.len())
            .max(TURN_BLOCKS_MIN)
            .min(shortest_chosen),
    }
}

type Messages<'a, const WIDTH: usize> = [Option<&'a [[u8; BLOCK_BYTES]]>; WIDTH];

fn gather<'a, const WIDTH: usize>(
    jobs: &[(&mut LaneState, &[u8])],
    lanes: &[Lane<'a>],
    blocks: usize,
) -> ([[u32; 4]; WIDTH], Messages<'a, WIDTH>) {
    assert!(lanes.len() <= WIDTH);
    let mut states = [[0u32; 4]; WIDTH];
    let mut messages = [None; WIDTH];
    for (slot, lane) in lanes.iter().enumerate() {
        states[slot] = jobs[lane.job].0.state;
        messages[slot] = Some(&lane.blocks[..blocks]);
    }
    (states, messages)
}

fn scatter(jobs: &mut [(&mut LaneState, &[u8])], lanes: &mut [Lane], states: &[[u32; 4]], blocks: usize) {
    for (lane, state) in lanes.iter_mut().zip(states) {
        jobs[lane.job].0.state = *state;
        lane.blocks = &lane.blocks[blocks..];
    }
}

#[cfg(test)]
mod tests;
