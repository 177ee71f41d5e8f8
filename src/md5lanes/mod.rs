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
//!   fallback) and advances a batch: streams with whole blocks share rounds, a stream left
//!   alone takes the single-stream path (`scalar.rs`, OpenSSL's block function), which is
//!   faster than one busy lane of a wide kernel.
//! - A round's `Shape` (which registers, how many independent chains) follows the number
//!   of streams it takes: AVX-512 runs up to 8 on ymm registers with AVX-512VL's
//!   instructions, 9–16 on one zmm chain or two ymm chains (whichever a start-up
//!   measurement finds faster on this CPU), 28 or more on two zmm chains; AVX2 runs two
//!   ymm chains from 9 streams.
//!
//! Measured with `cargo bench --bench md5lanes` (GB/s per second of thread CPU time,
//! medians of 3 interleaved repeats). AMD EPYC (Zen 4, zmm executed as two ymm halves),
//! streams of 64 MiB, before → after the shapes: AVX-512 at 2 / 4 / 8 / 16 / 32 streams
//! 0.90 / 1.79 / 3.46 / 5.91 / 7.91 → 1.19 / 2.35 / 4.45 / 6.80 / 7.40–7.96; AVX2 at 16
//! 3.99 → 5.34; one stream 0.76 (OpenSSL). Intel Xeon with AVX-512 (before the shapes):
//! one stream 0.48 (OpenSSL) and 0.42 (md-5); AVX-512 at 2 / 8 / 16 / 32 streams
//! 0.78 / 3.08 / 4.79 / 5.34; 64 messages of 4 KiB 5.6 against 0.42 for OpenSSL EVP one
//! by one (13×).

use std::fmt;
use std::sync::OnceLock;

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
    /// A round of at most 8 streams runs the same instructions on ymm registers (AVX-512VL),
    /// one of 9 to 16 in the shape timed at start (`calibrate_sixteen`), and one of 28 or
    /// more two 16-lane chains at once.
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
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl")
            }
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
            Kernel::Avx512 => "avx512f or avx512vl",
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
    /// Returns what its rounds did (`Rounds`), for the hasher's counters.
    pub fn update_batch(self, jobs: &mut [(&mut LaneState, &[u8])]) -> Rounds {
        self.update_batch_with(SingleStream::best(), jobs)
    }

    /// `update_batch` with a chosen lone-stream engine.
    pub fn update_batch_with(self, engine: SingleStream, jobs: &mut [(&mut LaneState, &[u8])]) -> Rounds {
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
        let mut rounds = Rounds::default();
        self.advance(engine, jobs, &mut tails, &mut rounds);
        self.advance(engine, jobs, &mut bodies, &mut rounds);
        for ((state, _), rest) in jobs.iter_mut().zip(rests) {
            state.keep_tail(rest);
        }
        rounds
    }

    /// Hashes every lane's blocks into its job's state: the longest streams first, a
    /// kernel's width at a time, until at most one stream is left for the single path.
    fn advance(
        self,
        engine: SingleStream,
        jobs: &mut [(&mut LaneState, &[u8])],
        lanes: &mut Vec<Lane>,
        rounds: &mut Rounds,
    ) {
        loop {
            lanes.retain(|lane| !lane.blocks.is_empty());
            let width = self.round_width(lanes.len());
            if lanes.len() <= 1 || width == 1 {
                for lane in lanes.iter() {
                    engine.compress(&mut jobs[lane.job].0.state, lane.blocks);
                    rounds.single_bytes += (lane.blocks.len() * BLOCK_BYTES) as u64;
                }
                return;
            }
            lanes.sort_unstable_by_key(|lane| std::cmp::Reverse(lane.blocks.len()));
            let chosen = lanes.len().min(width);
            let blocks = round_blocks(lanes, chosen);
            self.round(jobs, &mut lanes[..chosen], blocks, rounds);
        }
    }

    /// Streams one round takes when `streams` have blocks left: the widest shape worth
    /// running for that many (`Shape::for_streams`).
    fn round_width(self, streams: usize) -> usize {
        Shape::for_streams(self, streams).lanes()
    }

    /// Runs `blocks` blocks of each of `lanes` (at most the round's width) in one call.
    fn round(self, jobs: &mut [(&mut LaneState, &[u8])], lanes: &mut [Lane], blocks: usize, rounds: &mut Rounds) {
        let shape = Shape::for_streams(self, lanes.len());
        rounds.lane_bytes += (lanes.len() * blocks * BLOCK_BYTES) as u64;
        rounds.room_bytes += (shape.lanes() * blocks * BLOCK_BYTES) as u64;
        shape.run(jobs, lanes, blocks);
    }

    /// The shapes this kernel's rounds take, for the start-up log: on AVX-512 it measures
    /// (once per process) which 16-lane shape this CPU runs faster.
    pub fn describe_rounds(self) -> String {
        match self {
            Kernel::Avx512 => {
                let choice = sixteen();
                format!(
                    "up to 8 streams: {}; 9-16: {} (16 lanes x 2 KiB took {} ns on one zmm chain, {} ns on two ymm chains); 17-{}: rounds of 16 as 9-16, then the rest; more: {}",
                    Shape::Ymm { ternary: true, groups: 1 }.name(),
                    choice.shape.name(),
                    choice.zmm_nanos,
                    choice.ymm_pair_nanos,
                    AVX512_PAIR_STREAMS_MIN - 1,
                    Shape::Zmm { groups: 2 }.name()
                )
            }
            Kernel::Avx2 => format!(
                "up to 8 streams: {}; more: {}",
                Shape::Ymm {
                    ternary: false,
                    groups: 1
                }
                .name(),
                Shape::Ymm {
                    ternary: false,
                    groups: 2
                }
                .name()
            ),
            Kernel::Scalar => Shape::Single.name().to_string(),
        }
    }
}

/// What an `update_batch` call's rounds did, in bytes (whole 64-byte blocks, padding
/// included): hashed in SIMD lanes, the room those rounds had (each round's width times
/// its length: a round of 5 streams on an 8-lane shape has room for 8), and hashed one
/// stream at a time (a lone stream, or the scalar kernel). `lane_bytes / room_bytes` is
/// how full the lanes ran: the share of the kernel's work that hashed a stream's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rounds {
    pub lane_bytes: u64,
    pub room_bytes: u64,
    pub single_bytes: u64,
}

impl std::ops::AddAssign for Rounds {
    fn add_assign(&mut self, other: Rounds) {
        self.lane_bytes += other.lane_bytes;
        self.room_bytes += other.room_bytes;
        self.single_bytes += other.single_bytes;
    }
}

/// The registers and chains one kernel call runs: `groups` independent chains of 16 lanes
/// (zmm) or of 8 (ymm, with AVX-512VL's ternary logic and rotate or with AVX2 alone).
/// Independent chains fill the cycles each one waits on its step's dependencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Zmm { groups: usize },
    Ymm { ternary: bool, groups: usize },
    Single,
}

/// What the CPU decides for AVX-512 rounds of 9 to 16 streams: one zmm chain, or two ymm
/// chains (measured once per process, `calibrate_sixteen`).
static AVX512_SIXTEEN: OnceLock<SixteenChoice> = OnceLock::new();

/// The 16-lane shape AVX-512 rounds take, and the timings that chose it.
#[derive(Clone, Copy, Debug)]
struct SixteenChoice {
    shape: Shape,
    zmm_nanos: u64,
    ymm_pair_nanos: u64,
}

/// Blocks per lane and repeats of `calibrate_sixteen`: 16 lanes × 32 blocks is 32 KiB, in
/// the core's caches, about 5 µs a call; the fastest of 25 calls of each shape (taken in
/// turns) is what another process's time slice or an interrupt cannot make look faster.
const CALIBRATION_BLOCKS: usize = 32;
const CALIBRATION_REPEATS: usize = 25;

impl Shape {
    /// Every shape, for the tests.
    #[cfg(test)]
    const ALL: [Shape; 7] = [
        Shape::Zmm { groups: 1 },
        Shape::Zmm { groups: 2 },
        Shape::Ymm {
            ternary: true,
            groups: 1,
        },
        Shape::Ymm {
            ternary: true,
            groups: 2,
        },
        Shape::Ymm {
            ternary: false,
            groups: 1,
        },
        Shape::Ymm {
            ternary: false,
            groups: 2,
        },
        Shape::Single,
    ];

    /// The shape a round of `streams` streams runs on `kernel`. AVX-512: up to 8 on ymm
    /// registers (a 16-lane round would run half empty), 9 to 27 in the calibrated 16-lane
    /// shape (from 17 `advance` takes 16 of them a round), 28 and more two zmm chains
    /// (`AVX512_PAIR_STREAMS_MIN`). AVX2: two
    /// ymm chains from 9 (one paired round costs less than an 8-lane round and another for
    /// the rest, even a lone stream on the single-stream path).
    fn for_streams(kernel: Kernel, streams: usize) -> Shape {
        match kernel {
            Kernel::Avx512 => match streams {
                s if s >= AVX512_PAIR_STREAMS_MIN => Shape::Zmm { groups: 2 },
                s if s > AVX2_LANES => sixteen().shape,
                _ => Shape::Ymm {
                    ternary: true,
                    groups: 1,
                },
            },
            Kernel::Avx2 if streams > AVX2_LANES => Shape::Ymm {
                ternary: false,
                groups: 2,
            },
            Kernel::Avx2 => Shape::Ymm {
                ternary: false,
                groups: 1,
            },
            Kernel::Scalar => Shape::Single,
        }
    }

    fn lanes(self) -> usize {
        match self {
            Shape::Zmm { groups } => AVX512_LANES * groups,
            Shape::Ymm { groups, .. } => AVX2_LANES * groups,
            Shape::Single => 1,
        }
    }

    /// The kernel whose CPU features this shape's instructions need.
    fn kernel(self) -> Kernel {
        match self {
            Shape::Zmm { .. } | Shape::Ymm { ternary: true, .. } => Kernel::Avx512,
            Shape::Ymm { ternary: false, .. } => Kernel::Avx2,
            Shape::Single => Kernel::Scalar,
        }
    }

    /// Runs `blocks` blocks of each of `lanes` (at most this shape's lanes) in one call.
    fn run(self, jobs: &mut [(&mut LaneState, &[u8])], lanes: &mut [Lane], blocks: usize) {
        assert!(lanes.len() <= self.lanes(), "more streams than the round's lanes");
        // SAFETY (every `unsafe` call below): a shape's instructions are those of its
        // kernel, checked here (a cached flag load): the enum is public, so a hand-built
        // `Kernel::Avx512` on a CPU without it must stop, not run. `detect`/`from_name`
        // check it too, and `best` picks only available kernels.
        assert!(self.kernel().is_available(), "an MD5 kernel this CPU lacks");
        match self {
            #[cfg(target_arch = "x86_64")]
            Shape::Zmm { groups: 2 } => {
                run::<{ 2 * AVX512_LANES }>(jobs, lanes, blocks, |s, m, b| unsafe { avx512::compress::<2>(s, m, b) })
            }
            #[cfg(target_arch = "x86_64")]
            Shape::Zmm { .. } => {
                run::<AVX512_LANES>(jobs, lanes, blocks, |s, m, b| unsafe { avx512::compress::<1>(s, m, b) })
            }
            #[cfg(target_arch = "x86_64")]
            Shape::Ymm {
                ternary: true,
                groups: 2,
            } => run::<{ 2 * AVX2_LANES }>(jobs, lanes, blocks, |s, m, b| unsafe {
                avx2::compress_ternary::<2>(s, m, b)
            }),
            #[cfg(target_arch = "x86_64")]
            Shape::Ymm { ternary: true, .. } => run::<AVX2_LANES>(jobs, lanes, blocks, |s, m, b| unsafe {
                avx2::compress_ternary::<1>(s, m, b)
            }),
            #[cfg(target_arch = "x86_64")]
            Shape::Ymm { groups: 2, .. } => {
                run::<{ 2 * AVX2_LANES }>(jobs, lanes, blocks, |s, m, b| unsafe { avx2::compress::<2>(s, m, b) })
            }
            #[cfg(target_arch = "x86_64")]
            Shape::Ymm { .. } => {
                run::<AVX2_LANES>(jobs, lanes, blocks, |s, m, b| unsafe { avx2::compress::<1>(s, m, b) })
            }
            _ => {
                for lane in lanes.iter_mut() {
                    md5::block_api::compress(&mut jobs[lane.job].0.state, &lane.blocks[..blocks]);
                    lane.blocks = &lane.blocks[blocks..];
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Zmm { groups: 2 } => "two zmm chains",
            Shape::Zmm { .. } => "one zmm chain",
            Shape::Ymm {
                ternary: true,
                groups: 2,
            } => "two ymm chains (AVX-512VL)",
            Shape::Ymm { ternary: true, .. } => "one ymm chain (AVX-512VL)",
            Shape::Ymm { groups: 2, .. } => "two ymm chains",
            Shape::Ymm { .. } => "one ymm chain",
            Shape::Single => "one stream at a time",
        }
    }
}

fn sixteen() -> SixteenChoice {
    *AVX512_SIXTEEN.get_or_init(calibrate_sixteen)
}

/// Times one zmm chain against two ymm chains on 16 lanes of cached blocks and keeps the
/// faster: a CPU that runs a zmm instruction as two ymm halves (AMD Zen 4) does better
/// with two independent ymm chains (measured there: 6.8 against 5.9 GB/s at 16 streams of
/// 64 MiB), one with full-width zmm units (Intel Xeon) with the zmm chain.
fn calibrate_sixteen() -> SixteenChoice {
    let zmm = Shape::Zmm { groups: 1 };
    let ymm_pair = Shape::Ymm {
        ternary: true,
        groups: 2,
    };
    if !Kernel::Avx512.is_available() {
        return SixteenChoice {
            shape: zmm,
            zmm_nanos: 0,
            ymm_pair_nanos: 0,
        };
    }
    let blocks: Vec<[u8; BLOCK_BYTES]> = (0..AVX512_LANES * CALIBRATION_BLOCKS)
        .map(|block| std::array::from_fn(|byte| (block * 31 + byte * 7) as u8))
        .collect();
    let mut states = vec![LaneState::new(); AVX512_LANES];
    let time = |shape: Shape, states: &mut [LaneState]| {
        let mut jobs: Vec<(&mut LaneState, &[u8])> = states.iter_mut().map(|state| (state, &[][..])).collect();
        let mut lanes: Vec<Lane> = blocks
            .chunks(CALIBRATION_BLOCKS)
            .enumerate()
            .map(|(job, blocks)| Lane { job, blocks })
            .collect();
        let started = std::time::Instant::now();
        shape.run(&mut jobs, &mut lanes, CALIBRATION_BLOCKS);
        started.elapsed().as_nanos() as u64
    };
    let (mut zmm_nanos, mut ymm_pair_nanos) = (u64::MAX, u64::MAX);
    for _ in 0..CALIBRATION_REPEATS {
        zmm_nanos = zmm_nanos.min(time(zmm, &mut states));
        ymm_pair_nanos = ymm_pair_nanos.min(time(ymm_pair, &mut states));
    }
    SixteenChoice {
        shape: if ymm_pair_nanos < zmm_nanos { ymm_pair } else { zmm },
        zmm_nanos,
        ymm_pair_nanos,
    }
}

/// One kernel call over `lanes` (at most `WIDTH`): gathers their states and next blocks,
/// runs `compress`, and puts the states back.
#[cfg(target_arch = "x86_64")]
fn run<const WIDTH: usize>(
    jobs: &mut [(&mut LaneState, &[u8])],
    lanes: &mut [Lane],
    blocks: usize,
    compress: impl FnOnce(&mut [[u32; 4]], &[Option<&[[u8; BLOCK_BYTES]]>], usize),
) {
    let (mut states, messages) = gather::<WIDTH>(jobs, lanes, blocks);
    compress(&mut states, &messages, blocks);
    scatter(jobs, lanes, &states, blocks);
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

/// A kernel call's arguments, as every kernel checks them: `lanes` states and messages,
/// and no message shorter than the round.
fn check_call(states: &[[u32; 4]], messages: &[Option<&[[u8; BLOCK_BYTES]]>], blocks: usize, lanes: usize) {
    assert_eq!(states.len(), lanes);
    assert_eq!(messages.len(), lanes);
    for message in messages.iter().flatten() {
        assert!(message.len() >= blocks, "a lane has fewer blocks than the round");
    }
}

/// Word `word` (0 for a .. 3 for d) of each of the first `L` states: one register's load.
fn state_words<const L: usize>(states: &[[u32; 4]], word: usize) -> [u32; L] {
    std::array::from_fn(|lane| states[lane][word])
}

/// Back into the first `L` states: `words[0]` their a, .. `words[3]` their d.
fn set_state_words<const L: usize>(states: &mut [[u32; 4]], words: [[u32; L]; 4]) {
    for (lane, state) in states[..L].iter_mut().enumerate() {
        *state = [words[0][lane], words[1][lane], words[2][lane], words[3][lane]];
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
