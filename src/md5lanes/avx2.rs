//! Eight MD5 lanes, one per 32-bit element of a ymm register. Two kernels share this
//! layout:
//!
//! - `compress` needs only AVX2. Without AVX-512's ternary logic and rotate, a round
//!   function is two or three boolean instructions and a rotate is two shifts and an or:
//!   about nine instructions a step.
//! - `compress_ternary` needs AVX-512VL, which gives ymm registers `vpternlogd` (each round
//!   function in one instruction) and `vprold` (the rotate): six instructions a step, as
//!   the 16-lane kernel, at half its width. The AVX-512 kernel runs its rounds of up to 8
//!   streams here: on a CPU that executes a zmm instruction as two ymm halves (AMD Zen 4)
//!   a 16-lane round with 8 lanes busy costs twice this one, and on one that does not
//!   (Intel) it still occupies the wider ports for no more work.
//!
//! A block is 16 words and a ymm holds 8, so each lane's block is two rows; the eight
//! lanes' first halves and second halves are each transposed 8×8 (32-bit unpacks, 64-bit
//! unpacks, a 128-bit permute: 24 shuffles) into message words 0–7 and 8–15.

use std::arch::x86_64::*;

use super::{check_call, md5_rounds, set_state_words, state_words, BLOCK_BYTES, FILLER_BLOCK};

pub const LANES: usize = super::AVX2_LANES;

/// One 8-lane kernel: `$step` is the step macro of the instruction set in `$features`.
macro_rules! eight_lane_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, $step:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub fn $name<const GROUPS: usize>(
            states: &mut [[u32; 4]],
            messages: &[Option<&[[u8; BLOCK_BYTES]]>],
            blocks: usize,
        ) {
            check_call(states, messages, blocks, LANES * GROUPS);
            let zero = _mm256_setzero_si256();
            let (mut a, mut b, mut c, mut d) = ([zero; GROUPS], [zero; GROUPS], [zero; GROUPS], [zero; GROUPS]);
            for group in 0..GROUPS {
                let lanes = &states[LANES * group..LANES * (group + 1)];
                a[group] = load_words(&state_words(lanes, 0));
                b[group] = load_words(&state_words(lanes, 1));
                c[group] = load_words(&state_words(lanes, 2));
                d[group] = load_words(&state_words(lanes, 3));
            }
            for block in 0..blocks {
                // m[w][group]: message word w of the group's 8 lanes.
                let mut m = [[zero; GROUPS]; 16];
                for group in 0..GROUPS {
                    let mut low_rows = [zero; LANES];
                    let mut high_rows = [zero; LANES];
                    for (lane, message) in messages[LANES * group..LANES * (group + 1)].iter().enumerate() {
                        let bytes = message.map_or(&FILLER_BLOCK, |message| &message[block]);
                        let (low, high) = bytes.split_at(BLOCK_BYTES / 2);
                        low_rows[lane] = load_half(low.try_into().expect("half a block"));
                        high_rows[lane] = load_half(high.try_into().expect("half a block"));
                    }
                    let (low, high) = (transpose(low_rows), transpose(high_rows));
                    for word in 0..LANES {
                        m[word][group] = low[word];
                        m[LANES + word][group] = high[word];
                    }
                }
                let (a0, b0, c0, d0) = (a, b, c, d);
                md5_rounds!($step, a, b, c, d, m);
                for group in 0..GROUPS {
                    a[group] = _mm256_add_epi32(a[group], a0[group]);
                    b[group] = _mm256_add_epi32(b[group], b0[group]);
                    c[group] = _mm256_add_epi32(c[group], c0[group]);
                    d[group] = _mm256_add_epi32(d[group], d0[group]);
                }
            }
            for group in 0..GROUPS {
                let words = [store_words(a[group]), store_words(b[group]), store_words(c[group]), store_words(d[group])];
                set_state_words(&mut states[LANES * group..], words);
            }
        }
    };
}

eight_lane_kernel!(
    /// Advances each of `8 * GROUPS` states by `blocks` blocks of its message; a `None`
    /// lane reads a filler block and its state comes back changed but meaningless. With
    /// two groups the two 8-lane chains are independent, so one's steps fill the cycles
    /// the other waits on its dependency chain.
    compress,
    "avx2",
    step
);

eight_lane_kernel!(
    /// `compress` with AVX-512VL's ternary logic and rotate on ymm registers.
    compress_ternary,
    "avx2,avx512f,avx512vl",
    step_ternary
);

/// `a = b + ((a + f(b, c, d) + m + k) <<< s)`, RFC 1321 §3.4, each f written so that b,
/// the newest word, is as few instructions from the result as possible:
/// F = ((c ^ d) & b) ^ d, G = (b & d) | (c & !d), H = b ^ c ^ d, I = c ^ (b | !d).
macro_rules! step {
    ($function:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:literal, $s:literal) => {
        for group in 0..$a.len() {
            let function = step!(@ $function, $b[group], $c[group], $d[group]);
            let sum = _mm256_add_epi32(_mm256_add_epi32($a[group], $m[group]), _mm256_set1_epi32($k as u32 as i32));
            let sum = _mm256_add_epi32(sum, function);
            let rotated = _mm256_or_si256(_mm256_slli_epi32::<$s>(sum), _mm256_srli_epi32::<{ 32 - $s }>(sum));
            $a[group] = _mm256_add_epi32($b[group], rotated);
        }
    };
    (@ F, $b:expr, $c:expr, $d:expr) => { _mm256_xor_si256(_mm256_and_si256(_mm256_xor_si256($c, $d), $b), $d) };
    (@ G, $b:expr, $c:expr, $d:expr) => { _mm256_or_si256(_mm256_and_si256($b, $d), _mm256_andnot_si256($d, $c)) };
    (@ H, $b:expr, $c:expr, $d:expr) => { _mm256_xor_si256(_mm256_xor_si256($c, $d), $b) };
    (@ I, $b:expr, $c:expr, $d:expr) => { _mm256_xor_si256($c, _mm256_or_si256($b, _mm256_xor_si256($d, _mm256_set1_epi32(-1)))) };
}
use step;

/// `step` with each round function one `vpternlogd` (the immediates of `avx512.rs`) and
/// the rotate one `vprold`.
macro_rules! step_ternary {
    ($function:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:literal, $s:literal) => {
        for group in 0..$a.len() {
            let function = step_ternary!(@ $function, $b[group], $c[group], $d[group]);
            let sum = _mm256_add_epi32(_mm256_add_epi32($a[group], $m[group]), _mm256_set1_epi32($k as u32 as i32));
            $a[group] = _mm256_add_epi32($b[group], _mm256_rol_epi32::<$s>(_mm256_add_epi32(sum, function)));
        }
    };
    (@ F, $b:expr, $c:expr, $d:expr) => { _mm256_ternarylogic_epi32::<0xca>($b, $c, $d) };
    (@ G, $b:expr, $c:expr, $d:expr) => { _mm256_ternarylogic_epi32::<0xe4>($b, $c, $d) };
    (@ H, $b:expr, $c:expr, $d:expr) => { _mm256_ternarylogic_epi32::<0x96>($b, $c, $d) };
    (@ I, $b:expr, $c:expr, $d:expr) => { _mm256_ternarylogic_epi32::<0x39>($b, $c, $d) };
}
use step_ternary;

/// Eight rows of 8 words in, columns out: `columns[w]` holds word `w` of every row.
#[target_feature(enable = "avx2")]
fn transpose(rows: [__m256i; 8]) -> [__m256i; 8] {
    // Within each group of four rows, 128-bit lane k of `quads[group][j]` ends up holding
    // word 4k + j of the group's four rows; a 128-bit permute then joins the two groups.
    let mut quads = [[_mm256_setzero_si256(); 4]; 2];
    for (group, quad) in quads.iter_mut().enumerate() {
        let r = &rows[4 * group..4 * group + 4];
        let low01 = _mm256_unpacklo_epi32(r[0], r[1]);
        let high01 = _mm256_unpackhi_epi32(r[0], r[1]);
        let low23 = _mm256_unpacklo_epi32(r[2], r[3]);
        let high23 = _mm256_unpackhi_epi32(r[2], r[3]);
        *quad = [
            _mm256_unpacklo_epi64(low01, low23),
            _mm256_unpackhi_epi64(low01, low23),
            _mm256_unpacklo_epi64(high01, high23),
            _mm256_unpackhi_epi64(high01, high23),
        ];
    }
    let mut columns = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        columns[j] = _mm256_permute2x128_si256::<0x20>(quads[0][j], quads[1][j]);
        columns[4 + j] = _mm256_permute2x128_si256::<0x31>(quads[0][j], quads[1][j]);
    }
    columns
}

#[target_feature(enable = "avx2")]
fn load_half(bytes: &[u8; BLOCK_BYTES / 2]) -> __m256i {
    // SAFETY: the reference covers the 32 bytes read; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
fn load_words(words: &[u32; LANES]) -> __m256i {
    // SAFETY: the reference covers the 32 bytes read; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(words.as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
fn store_words(vector: __m256i) -> [u32; LANES] {
    let mut words = [0u32; LANES];
    // SAFETY: `words` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), vector) };
    words
}
