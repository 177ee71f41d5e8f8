//! Eight MD5 lanes, one per 32-bit element of a ymm register (AVX2). Without AVX-512's
//! ternary logic and rotate, a round function is two or three boolean instructions and a
//! rotate is two shifts and an or: about nine instructions a step against AVX-512's six.
//!
//! A block is 16 words and a ymm holds 8, so each lane's block is two rows; the eight
//! lanes' first halves and second halves are each transposed 8×8 (32-bit unpacks, 64-bit
//! unpacks, a 128-bit permute: 24 shuffles) into message words 0–7 and 8–15.

use std::arch::x86_64::*;

use super::{md5_rounds, Messages, BLOCK_BYTES, FILLER_BLOCK};

pub const LANES: usize = super::AVX2_LANES;

/// Advances each of 8 states by `blocks` blocks of its message; a `None` lane reads a
/// filler block and its state comes back changed but meaningless.
#[target_feature(enable = "avx2")]
pub fn compress(states: &mut [[u32; 4]; LANES], messages: &Messages<LANES>, blocks: usize) {
    for message in messages.iter().flatten() {
        assert!(message.len() >= blocks, "a lane has fewer blocks than the round");
    }
    let mut a = load_words(&std::array::from_fn(|lane| states[lane][0]));
    let mut b = load_words(&std::array::from_fn(|lane| states[lane][1]));
    let mut c = load_words(&std::array::from_fn(|lane| states[lane][2]));
    let mut d = load_words(&std::array::from_fn(|lane| states[lane][3]));
    for block in 0..blocks {
        let mut low_rows = [_mm256_setzero_si256(); LANES];
        let mut high_rows = [_mm256_setzero_si256(); LANES];
        for (lane, message) in messages.iter().enumerate() {
            let bytes = message.map_or(&FILLER_BLOCK, |message| &message[block]);
            let (low, high) = bytes.split_at(BLOCK_BYTES / 2);
            low_rows[lane] = load_half(low.try_into().expect("half a block"));
            high_rows[lane] = load_half(high.try_into().expect("half a block"));
        }
        let (low, high) = (transpose(low_rows), transpose(high_rows));
        let m = [
            low[0], low[1], low[2], low[3], low[4], low[5], low[6], low[7], high[0], high[1], high[2], high[3],
            high[4], high[5], high[6], high[7],
        ];
        let (a0, b0, c0, d0) = (a, b, c, d);
        md5_rounds!(step, a, b, c, d, m);
        a = _mm256_add_epi32(a, a0);
        b = _mm256_add_epi32(b, b0);
        c = _mm256_add_epi32(c, c0);
        d = _mm256_add_epi32(d, d0);
    }
    let words = [store_words(a), store_words(b), store_words(c), store_words(d)];
    for (lane, state) in states.iter_mut().enumerate() {
        *state = [words[0][lane], words[1][lane], words[2][lane], words[3][lane]];
    }
}

/// `a = b + ((a + f(b, c, d) + m + k) <<< s)`, RFC 1321 §3.4, each f written so that b,
/// the newest word, is as few instructions from the result as possible:
/// F = ((c ^ d) & b) ^ d, G = (b & d) | (c & !d), H = b ^ c ^ d, I = c ^ (b | !d).
macro_rules! step {
    ($function:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:literal, $s:literal) => {
        let function = step!(@ $function, $b, $c, $d);
        let sum = _mm256_add_epi32(_mm256_add_epi32($a, $m), _mm256_set1_epi32($k as u32 as i32));
        let sum = _mm256_add_epi32(sum, function);
        let rotated = _mm256_or_si256(_mm256_slli_epi32::<$s>(sum), _mm256_srli_epi32::<{ 32 - $s }>(sum));
        $a = _mm256_add_epi32($b, rotated);
    };
    (@ F, $b:ident, $c:ident, $d:ident) => { _mm256_xor_si256(_mm256_and_si256(_mm256_xor_si256($c, $d), $b), $d) };
    (@ G, $b:ident, $c:ident, $d:ident) => { _mm256_or_si256(_mm256_and_si256($b, $d), _mm256_andnot_si256($d, $c)) };
    (@ H, $b:ident, $c:ident, $d:ident) => { _mm256_xor_si256(_mm256_xor_si256($c, $d), $b) };
    (@ I, $b:ident, $c:ident, $d:ident) => { _mm256_xor_si256($c, _mm256_or_si256($b, _mm256_xor_si256($d, _mm256_set1_epi32(-1)))) };
}
use step;

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
