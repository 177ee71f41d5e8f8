//! `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1): the shared decoder
//! (`crate::chunked`) writing into the growing body, never past the caller's limit.

use crate::chunked;
use crate::error::RequestError;

#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    inner: chunked::ChunkedDecoder,
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    /// Consume bytes from `input`, appending body data to `out` without letting `out` grow
    /// past `out_len_max` (the caller's body limit plus one, so "too large" is detected).
    /// Returns how many input bytes were consumed; stops early at the end of the body.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>, out_len_max: usize) -> Result<usize, RequestError> {
        let start = out.len();
        // The data written is never more than the input: no need for more room.
        let room = out_len_max.saturating_sub(start).min(input.len());
        out.resize(start + room, 0);
        let decoded = self.inner.decode(input, &mut out[start..]);
        let (used, written) = match decoded {
            Ok(counts) => counts,
            Err(malformed) => {
                out.truncate(start + malformed.written);
                return Err(RequestError::Malformed(chunked::Malformed::REASON));
            }
        };
        out.truncate(start + written);
        // The decoder stops before the input's end only when the output is full, with
        // body data still to come: past the limit.
        if used < input.len() && !self.inner.is_done() {
            return Err(RequestError::BodyTooLarge);
        }
        Ok(used)
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
