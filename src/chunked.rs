//! The `Transfer-Encoding: chunked` decoder (RFC 9112 §7.1), one for both directions:
//! request bodies (`http::chunked`, into a growing body under its limit) and S3 response
//! bodies (`s3`, a caller's bounded buffer at a time). It is fed whatever the socket
//! produced, writes the data bytes into the output slice it is given, stops when that is
//! full and resumes at the next call; chunk extensions and trailers are skipped. Pure, so
//! the framing is tested without sockets.

use crate::limits::CHUNK_SIZE_DIGITS_MAX;

/// Broken chunked framing, after `written` body bytes of this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub written: usize,
}

impl Malformed {
    pub const REASON: &'static str = "malformed chunked body";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { size: u64, digits: u8 },
    Extension { size: u64 },
    SizeLf { size: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerEndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input` into `out`: returns (input bytes consumed, body bytes written).
    /// Stops when `input` is used up, `out` is full, or the body (with its trailers) ends.
    ///
    /// A framing error comes with the body bytes written before it (they are in `out`).
    pub fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), Malformed> {
        let mut index = 0;
        let mut written = 0;
        while index < input.len() && self.state != State::Done {
            let byte = input[index];
            self.state = match self.state {
                State::Size { size, digits } => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < CHUNK_SIZE_DIGITS_MAX => {
                        let value = (byte as char).to_digit(16).unwrap_or(0) as u64;
                        State::Size {
                            size: size * 16 + value,
                            digits: digits + 1,
                        }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => State::Extension { size },
                    b'\r' if digits > 0 => State::SizeLf { size },
                    _ => return Err(Malformed { written }),
                },
                State::Extension { size } => match byte {
                    b'\r' => State::SizeLf { size },
                    // A bare LF ends the line for some parsers and not for others.
                    b'\n' => return Err(Malformed { written }),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } => match (byte, size) {
                    (b'\n', 0) => State::TrailerLineStart,
                    (b'\n', _) => State::Data { remaining: size },
                    _ => return Err(Malformed { written }),
                },
                State::Data { remaining } => {
                    let room = out.len() - written;
                    if room == 0 {
                        break;
                    }
                    let take = (remaining.min((input.len() - index) as u64) as usize).min(room);
                    out[written..written + take].copy_from_slice(&input[index..index + take]);
                    written += take;
                    index += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                    continue;
                }
                State::DataCr if byte == b'\r' => State::DataLf,
                State::DataLf if byte == b'\n' => State::Size { size: 0, digits: 0 },
                State::DataCr | State::DataLf => return Err(Malformed { written }),
                State::TrailerLineStart => match byte {
                    b'\r' => State::TrailerEndLf,
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::TrailerLine if byte == b'\n' => State::TrailerLineStart,
                State::TrailerLine => State::TrailerLine,
                State::TrailerEndLf if byte == b'\n' => State::Done,
                State::TrailerEndLf => return Err(Malformed { written }),
                State::Done => State::Done,
            };
            index += 1;
        }
        Ok((index, written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` through an output of `room` bytes at a time; (body, unused input).
    fn decode_all(pieces: &[&[u8]], room: usize) -> Result<(Vec<u8>, usize), Malformed> {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut leftover = 0;
        let mut out = vec![0; room];
        for piece in pieces {
            let mut input: &[u8] = piece;
            loop {
                let (used, written) = decoder.decode(input, &mut out)?;
                body.extend_from_slice(&out[..written]);
                input = &input[used..];
                if input.is_empty() || decoder.is_done() {
                    break;
                }
            }
            leftover += input.len();
        }
        assert!(decoder.is_done(), "body did not end");
        Ok((body, leftover))
    }

    #[test]
    fn decodes_across_pieces_and_small_outputs() {
        let wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for room in [1, 3, 64] {
            let (body, leftover) = decode_all(&[wire], room).expect("decodes");
            assert_eq!(body, b"hello world");
            assert_eq!(leftover, 4, "bytes after the body are left for the next response");
        }
        let pieces: Vec<&[u8]> = wire.chunks(1).collect();
        let (body, _) = decode_all(&pieces, 2).expect("decodes byte by byte");
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn refuses_broken_framing() {
        assert!(decode_all(&[b"x\r\n"], 8).is_err());
        assert!(decode_all(&[b"3\r\nabcX\r\n0\r\n\r\n"], 8).is_err());
        assert!(decode_all(&[b"ffffffffffffffff\r\n"], 8).is_err());
    }
}
