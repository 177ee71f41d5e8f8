//! Incremental decoder for `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//! It is fed whatever the socket produced and emits the data bytes; chunk extensions and
//! trailers are skipped. Pure, so the framing is tested without sockets.

use crate::error::RequestError;
use crate::limits::CHUNK_SIZE_DIGITS_MAX;

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

#[derive(Debug)]
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

    /// Consume bytes from `input`, appending body data to `out` without letting `out` grow
    /// past `out_len_max` (the caller's body limit plus one, so "too large" is detected).
    /// Returns how many input bytes were consumed; stops early at the end of the body.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>, out_len_max: usize) -> Result<usize, RequestError> {
        let bad = RequestError::Malformed("malformed chunked body");
        let mut index = 0;
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
                    _ => return Err(bad),
                },
                State::Extension { size } => match byte {
                    b'\r' => State::SizeLf { size },
                    // A bare LF ends the line for some parsers and not for others.
                    b'\n' => return Err(bad),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } => match (byte, size) {
                    (b'\n', 0) => State::TrailerLineStart,
                    (b'\n', _) => State::Data { remaining: size },
                    _ => return Err(bad),
                },
                State::Data { remaining } => {
                    let available = (input.len() - index) as u64;
                    let take = remaining.min(available) as usize;
                    if out.len() + take > out_len_max {
                        let room = out_len_max - out.len();
                        out.extend_from_slice(&input[index..index + room]);
                        return Err(RequestError::BodyTooLarge);
                    }
                    out.extend_from_slice(&input[index..index + take]);
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
                State::DataCr | State::DataLf => return Err(bad),
                State::TrailerLineStart => match byte {
                    b'\r' => State::TrailerEndLf,
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::TrailerLine if byte == b'\n' => State::TrailerLineStart,
                State::TrailerLine => State::TrailerLine,
                State::TrailerEndLf if byte == b'\n' => State::Done,
                State::TrailerEndLf => return Err(bad),
                State::Done => State::Done,
            };
            index += 1;
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize), RequestError> {
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut leftover = 0;
        for piece in pieces {
            let used = decoder.decode(piece, &mut out, 1000)?;
            leftover += piece.len() - used;
        }
        assert!(decoder.is_done());
        Ok((out, leftover))
    }

    #[test]
    fn decodes_across_arbitrary_splits() {
        let body = b"5;ext=1\r\nhello\r\nB\r\n keep world\r\n0\r\nTrailer: x\r\n\r\nGET";
        for split in 0..body.len() {
            let (out, leftover) = decode_all(&[&body[..split], &body[split..]]).unwrap();
            assert_eq!(out, b"hello keep world");
            assert_eq!(leftover, 3, "the next request stays unread");
        }
    }

    #[test]
    fn refuses_bad_framing_and_oversize() {
        let mut decoder = ChunkedDecoder::default();
        assert!(decoder.decode(b"zz\r\n", &mut Vec::new(), 10).is_err());
        let mut decoder = ChunkedDecoder::default();
        assert!(decoder.decode(b"3\r\nabcX", &mut Vec::new(), 10).is_err());
        let mut decoder = ChunkedDecoder::default();
        let result = decoder.decode(b"b\r\nhello world\r\n", &mut Vec::new(), 5);
        assert!(matches!(result, Err(RequestError::BodyTooLarge)));
    }
}
