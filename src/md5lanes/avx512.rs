//! Sixteen MD5 lanes, one per 32-bit element of a zmm register (AVX-512F only). Each MD5
//! round function is one `vpternlogd` (its immediate is the function's truth table over
//! b, c, d) and each rotate one `vprold`, so a step is six instructions.
//!
//! Every lane reads its next block from a different buffer. The 16 blocks are loaded as
//! 16 rows and transposed 16×16 (32-bit unpacks, 64-bit unpacks, two 128-bit shuffles:
//! 64 shuffles per round of 16 blocks) so that vector `w` holds message word `w` of every
//! lane. A gather instead (`vpgatherqd` from 16 bases: 32 gathers of 8 per round) was
//! measured slower: 4.32 against 5.05 GB/s at 16 streams of 64 MiB, 4.37 against 4.48 on
//! 16 messages of 4 KiB (a throwaway copy of this kernel, same process, interleaved).

use std::arch::x86_64::*;

use super::{check_call, md5_rounds, set_state_words, state_words, BLOCK_BYTES, FILLER_BLOCK};

pub const LANES: usize = super::AVX512_LANES;

/// Advances each of `16 * GROUPS` states by `blocks` blocks of its message; a `None` lane
/// reads a filler block and its state comes back changed but meaningless. With two groups
/// the two 16-lane chains are independent, so one's steps fill the cycles the other waits
/// on its four-instruction dependency (ternlog, add, rotate, add) per step.
#[target_feature(enable = "avx512f")]
pub fn compress<const GROUPS: usize>(
    states: &mut [[u32; 4]],
    messages: &[Option<&[[u8; BLOCK_BYTES]]>],
    blocks: usize,
) {
    check_call(states, messages, blocks, LANES * GROUPS);
    let zero = _mm512_setzero_si512();
    let (mut a, mut b, mut c, mut d) = ([zero; GROUPS], [zero; GROUPS], [zero; GROUPS], [zero; GROUPS]);
    for group in 0..GROUPS {
        let lanes = &states[LANES * group..LANES * (group + 1)];
        a[group] = load_words(&state_words(lanes, 0));
        b[group] = load_words(&state_words(lanes, 1));
        c[group] = load_words(&state_words(lanes, 2));
        d[group] = load_words(&state_words(lanes, 3));
    }
    for block in 0..blocks {
        // m[w][group]: message word w of the group's 16 lanes.
        let mut m = [[zero; GROUPS]; 16];
        for group in 0..GROUPS {
            let mut rows = [zero; LANES];
            for (row, message) in rows.iter_mut().zip(&messages[LANES * group..]) {
                *row = load_block(message.map_or(&FILLER_BLOCK, |message| &message[block]));
            }
            for (word, column) in transpose(rows).into_iter().enumerate() {
                m[word][group] = column;
            }
        }
        let (a0, b0, c0, d0) = (a, b, c, d);
        md5_rounds!(step, a, b, c, d, m);
        for group in 0..GROUPS {
            a[group] = _mm512_add_epi32(a[group], a0[group]);
            b[group] = _mm512_add_epi32(b[group], b0[group]);
            c[group] = _mm512_add_epi32(c[group], c0[group]);
            d[group] = _mm512_add_epi32(d[group], d0[group]);
        }
    }
    for group in 0..GROUPS {
        let words = [
            store_words(a[group]),
            store_words(b[group]),
            store_words(c[group]),
            store_words(d[group]),
        ];
        set_state_words(&mut states[LANES * group..], words);
    }
}

/// `a = b + ((a + f(b, c, d) + m + k) <<< s)`, RFC 1321 §3.4. The `vpternlogd` immediate
/// is the truth table of f with b, c, d as the index's bits 2, 1, 0:
/// F = b ? c : d (0xca), G = d ? b : c (0xe4), H = b ^ c ^ d (0x96), I = c ^ (b | !d) (0x39).
macro_rules! step {
    ($function:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:literal, $s:literal) => {
        for group in 0..$a.len() {
            let function = step!(@ $function, $b[group], $c[group], $d[group]);
            let sum = _mm512_add_epi32(_mm512_add_epi32($a[group], $m[group]), _mm512_set1_epi32($k as u32 as i32));
            $a[group] = _mm512_add_epi32($b[group], _mm512_rol_epi32::<$s>(_mm512_add_epi32(sum, function)));
        }
    };
    (@ F, $b:expr, $c:expr, $d:expr) => { _mm512_ternarylogic_epi32::<0xca>($b, $c, $d) };
    (@ G, $b:expr, $c:expr, $d:expr) => { _mm512_ternarylogic_epi32::<0xe4>($b, $c, $d) };
    (@ H, $b:expr, $c:expr, $d:expr) => { _mm512_ternarylogic_epi32::<0x96>($b, $c, $d) };
    (@ I, $b:expr, $c:expr, $d:expr) => { _mm512_ternarylogic_epi32::<0x39>($b, $c, $d) };
}
use step;

/// Rows of 16 words in, columns out: `columns[w]` holds word `w` of every row.
#[target_feature(enable = "avx512f")]
fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
    // Within each group of four rows, two rounds of unpacks leave in 128-bit lane k of
    // `quads[group][j]` word 4k + j of the group's four rows.
    let mut quads = [[_mm512_setzero_si512(); 4]; 4];
    for (group, quad) in quads.iter_mut().enumerate() {
        let r = &rows[4 * group..4 * group + 4];
        let low01 = _mm512_unpacklo_epi32(r[0], r[1]);
        let high01 = _mm512_unpackhi_epi32(r[0], r[1]);
        let low23 = _mm512_unpacklo_epi32(r[2], r[3]);
        let high23 = _mm512_unpackhi_epi32(r[2], r[3]);
        *quad = [
            _mm512_unpacklo_epi64(low01, low23),
            _mm512_unpackhi_epi64(low01, low23),
            _mm512_unpacklo_epi64(high01, high23),
            _mm512_unpackhi_epi64(high01, high23),
        ];
    }
    // Then word 4k + j is 128-bit lane k of quads[0..4][j]: a 4×4 transpose of 128-bit lanes.
    let mut columns = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let even01 = _mm512_shuffle_i32x4::<0x88>(quads[0][j], quads[1][j]);
        let odd01 = _mm512_shuffle_i32x4::<0xdd>(quads[0][j], quads[1][j]);
        let even23 = _mm512_shuffle_i32x4::<0x88>(quads[2][j], quads[3][j]);
        let odd23 = _mm512_shuffle_i32x4::<0xdd>(quads[2][j], quads[3][j]);
        columns[j] = _mm512_shuffle_i32x4::<0x88>(even01, even23);
        columns[4 + j] = _mm512_shuffle_i32x4::<0x88>(odd01, odd23);
        columns[8 + j] = _mm512_shuffle_i32x4::<0xdd>(even01, even23);
        columns[12 + j] = _mm512_shuffle_i32x4::<0xdd>(odd01, odd23);
    }
    columns
}

#[target_feature(enable = "avx512f")]
fn load_block(block: &[u8; BLOCK_BYTES]) -> __m512i {
    // SAFETY: the reference covers the 64 bytes read; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(block.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn load_words(words: &[u32; LANES]) -> __m512i {
    // SAFETY: the reference covers the 64 bytes read; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn store_words(vector: __m512i) -> [u32; LANES] {
    let mut words = [0u32; LANES];
    // SAFETY: `words` is 64 writable bytes; storeu has no alignment requirement.
    unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), vector) };
    words
}
