//! `http::chunked::ChunkedDecoder` fed as the session feeds it: whatever the socket
//! produced, unconsumed bytes offered again with the next read. The first input byte
//! picks one of two modes:
//! - raw bytes: however the input is split into reads, the outcome is the one of a single
//!   read; the decoder never yields more bytes than it consumed nor more than its limit;
//!   an unfinished decoder consumes all it is given (else the session would spin); and
//!   where a strict reference decoder (RFC 9112 §7.1, CRLF only) finds a complete body,
//!   the decoder finds the same body ending at the same byte.
//! - an encoder: a body chunked with fuzzed sizes, hex case, leading zeros, extensions
//!   and trailers, followed by the next request, decodes to exactly that body (or to
//!   `BodyTooLarge` past the limit) and leaves the next request unread.
#![no_main]

use keepring::error::RequestError;
use keepring::http::chunked::ChunkedDecoder;
use keepring::limits::CHUNK_SIZE_DIGITS_MAX;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Unstructured::new(rest);
    let _ = match mode & 1 {
        0 => raw(&mut input),
        _ => encoded(&mut input),
    };
});

#[derive(Debug, PartialEq)]
enum Ending {
    Done,
    Unfinished,
    Malformed,
    TooLarge,
}

#[derive(Debug, PartialEq)]
struct Outcome {
    out: Vec<u8>,
    ending: Ending,
    /// Input bytes consumed (0 after an error).
    consumed: usize,
}

/// Feed `pieces` one read at a time, as `Session::read_chunked_some` does.
fn feed(pieces: &[&[u8]], out_len_max: usize) -> Outcome {
    let mut decoder = ChunkedDecoder::default();
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut given = 0;
    for piece in pieces {
        buffer.extend_from_slice(piece);
        given += piece.len();
        let ending = match decoder.decode(&buffer, &mut out, out_len_max) {
            Ok(used) => {
                assert!(used <= buffer.len());
                if !decoder.is_done() {
                    assert_eq!(used, buffer.len(), "an unfinished decoder consumes all it is given");
                }
                buffer.drain(..used);
                consumed += used;
                assert!(out.len() <= consumed, "more bytes out than consumed");
                match decoder.is_done() {
                    true => Ending::Done,
                    false => continue,
                }
            }
            Err(error) => {
                // An error does not say how much of its read it consumed.
                consumed = 0;
                match error {
                    RequestError::BodyTooLarge => {
                        assert_eq!(out.len(), out_len_max, "too large only once the limit is full");
                        Ending::TooLarge
                    }
                    RequestError::Malformed(_) => Ending::Malformed,
                    other => panic!("unexpected error {other:?}"),
                }
            }
        };
        assert!(out.len() <= out_len_max && out.len() <= given);
        return Outcome { out, ending, consumed };
    }
    assert!(out.len() <= out_len_max);
    Outcome {
        out,
        ending: Ending::Unfinished,
        consumed,
    }
}

/// Cut `bytes` into reads of the lengths `input` asks for (empty reads included).
fn split<'a>(bytes: &'a [u8], input: &mut Unstructured) -> Result<Vec<&'a [u8]>> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = match input.is_empty() {
            true => rest.len(),
            false => (input.int_in_range(0..=40u8)? as usize).min(rest.len()),
        };
        let (piece, after) = rest.split_at(len);
        pieces.push(piece);
        rest = after;
    }
    Ok(pieces)
}

fn raw(input: &mut Unstructured) -> Result<()> {
    let out_len_max = input.int_in_range(0..=300u16)? as usize;
    let cut_seed_len = input.int_in_range(0..=32u8)? as usize;
    let cut_seed = input.bytes(cut_seed_len.min(input.len()))?.to_vec();
    let bytes = input.bytes(input.len())?;
    let whole = feed(&[bytes], out_len_max);
    let pieces = split(bytes, &mut Unstructured::new(&cut_seed))?;
    let piecewise = feed(&pieces, out_len_max);
    assert_eq!(piecewise, whole, "split into {} reads", pieces.len());
    if let Some((body, end)) = reference_decode(bytes) {
        match body.len() <= out_len_max {
            true => assert_eq!(
                whole,
                Outcome {
                    out: body,
                    ending: Ending::Done,
                    consumed: end
                }
            ),
            false => assert_eq!(whole.ending, Ending::TooLarge),
        }
    }
    Ok(())
}

fn encoded(input: &mut Unstructured) -> Result<()> {
    let mut body = Vec::new();
    let mut wire = Vec::new();
    while input.arbitrary::<bool>()? {
        let len = (input.int_in_range(1..=64u8)? as usize).min(input.len());
        if len == 0 {
            break;
        }
        let chunk = input.bytes(len)?;
        write_size_line(&mut wire, chunk.len(), input)?;
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
        body.extend_from_slice(chunk);
    }
    write_size_line(&mut wire, 0, input)?;
    for index in 0..input.int_in_range(0..=3u8)? {
        wire.extend_from_slice(format!("X-Trailer-{index}: {}\r\n", token(input)?).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let body_end = wire.len();
    let next_request = b"GET /next HTTP/1.1\r\n\r\n";
    wire.extend_from_slice(next_request);

    assert_eq!(reference_decode(&wire), Some((body.clone(), body_end)));
    let out_len_max = match input.arbitrary::<bool>()? {
        true => body.len() + input.int_in_range(0..=8u8)? as usize,
        false => input.int_in_range(0..=body.len())?,
    };
    let pieces = split(&wire, input)?;
    let outcome = feed(&pieces, out_len_max);
    if body.len() <= out_len_max {
        let expected = Outcome {
            out: body,
            ending: Ending::Done,
            consumed: body_end,
        };
        assert_eq!(outcome, expected, "{:?}", String::from_utf8_lossy(&wire));
    } else {
        assert_eq!(outcome.ending, Ending::TooLarge);
        assert_eq!(outcome.out, body[..out_len_max]);
    }
    Ok(())
}

/// `<hex size>[;ext]\r\n` with fuzzed case, leading zeros (within the digit limit) and
/// extension.
fn write_size_line(wire: &mut Vec<u8>, size: usize, input: &mut Unstructured) -> Result<()> {
    let digits = match input.arbitrary::<bool>()? {
        true => format!("{size:X}"),
        false => format!("{size:x}"),
    };
    let zeros_max = CHUNK_SIZE_DIGITS_MAX as usize - digits.len();
    let zeros = input.int_in_range(0..=zeros_max.min(3))?;
    wire.extend_from_slice("0".repeat(zeros).as_bytes());
    wire.extend_from_slice(digits.as_bytes());
    if input.arbitrary::<bool>()? {
        wire.extend_from_slice(format!(";{}={}", token(input)?, token(input)?).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    Ok(())
}

fn token(input: &mut Unstructured) -> Result<String> {
    const ALPHABET: &[u8] = b"abcXYZ019-_.";
    let len = input.int_in_range(1..=8u8)?;
    (0..len).map(|_| Ok(*input.choose(ALPHABET)? as char)).collect()
}

/// A strict, whole-buffer decoder written from RFC 9112 §7.1 (only CRLF ends a line;
/// an extension starts with ';'; a trailer line has a ':'), with keepring's limit on size
/// digits. `Some((body, end))` for a complete valid body ending at `end`, else None.
fn reference_decode(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let digits = bytes[at..].iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
        if digits == 0 || digits > CHUNK_SIZE_DIGITS_MAX as usize {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&bytes[at..at + digits]).ok()?, 16).ok()?;
        at += digits;
        if bytes.get(at) == Some(&b';') {
            at += line_len(&bytes[at..]);
        }
        at = expect_crlf(bytes, at)?;
        if size == 0 {
            break;
        }
        let end = at.checked_add(usize::try_from(size).ok()?)?;
        body.extend_from_slice(bytes.get(at..end)?);
        at = expect_crlf(bytes, end)?;
    }
    loop {
        if let Some(end) = expect_crlf(bytes, at) {
            return Some((body, end));
        }
        let line = &bytes[at..at + line_len(&bytes[at..])];
        if !line.contains(&b':') {
            return None;
        }
        at = expect_crlf(bytes, at + line.len())?;
    }
}

fn expect_crlf(bytes: &[u8], at: usize) -> Option<usize> {
    (bytes.get(at..at + 2)? == b"\r\n").then_some(at + 2)
}

/// Bytes before the first CR or LF.
fn line_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|byte| !matches!(byte, b'\r' | b'\n')).count()
}
