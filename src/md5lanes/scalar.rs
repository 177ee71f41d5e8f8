//! One MD5 stream at a time, resumable from a raw state: the lone-stream path of a batch,
//! the padding blocks of `LaneState::finish`, and the whole of the `scalar` kernel.
//!
//! The fastest single stream here is OpenSSL's assembly block function (0.77 GB/s against
//! md-5's 0.43 GB/s, `digest.rs`), but OpenSSL's EVP API cannot start from a state it did
//! not build itself. Its low-level `MD5_Update` can: `MD5_CTX` is a public struct (md5.h:
//! `A, B, C, D, Nl, Nh, data[16], num`), so a context holding our four state words and no
//! buffered bytes, given whole blocks, runs exactly the block function over them and leaves
//! the new state in `A..D` (md32_common.h `HASH_UPDATE`). It also skips the EVP fetch and
//! its read lock that the 4 KiB profile of issue 16 shows. `MD5_Update` is deprecated in
//! OpenSSL 3 and absent from `no-deprecated` or statically linked builds, so it is looked
//! up at run time (`dlsym`) rather than linked: where it is missing, md-5's portable
//! `compress` takes over and nothing fails.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

/// An engine that advances one MD5 state by whole 64-byte blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleStream {
    /// OpenSSL's `MD5_Update` on a context rebuilt from the raw state.
    OpenSsl,
    /// md-5's portable Rust `compress`.
    Portable,
}

impl SingleStream {
    /// OpenSSL where its low-level MD5 is present, md-5 otherwise.
    pub fn best() -> SingleStream {
        if openssl_update().is_some() {
            SingleStream::OpenSsl
        } else {
            SingleStream::Portable
        }
    }

    /// Every engine that can run in this process (tests compare them all).
    pub fn available() -> Vec<SingleStream> {
        [SingleStream::OpenSsl, SingleStream::Portable]
            .into_iter()
            .filter(|engine| *engine == SingleStream::Portable || openssl_update().is_some())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            SingleStream::OpenSsl => "openssl",
            SingleStream::Portable => "md-5",
        }
    }

    pub fn compress(self, state: &mut [u32; 4], blocks: &[[u8; 64]]) {
        match (self, openssl_update()) {
            (SingleStream::OpenSsl, Some(update)) => compress_openssl(update, state, blocks),
            _ => md5::block_api::compress(state, blocks),
        }
    }
}

/// `MD5_CTX` as md5.h declares it (`MD5_LONG` is `unsigned int` on every LP64 target).
#[repr(C)]
struct Md5Context {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    bit_count_low: u32,
    bit_count_high: u32,
    data: [u32; 16],
    num: u32,
}

/// `int MD5_Update(MD5_CTX *c, const void *data, size_t len)`.
type Md5Update = unsafe extern "C" fn(*mut Md5Context, *const c_void, usize) -> c_int;

fn openssl_update() -> Option<Md5Update> {
    static UPDATE: OnceLock<Option<Md5Update>> = OnceLock::new();
    *UPDATE.get_or_init(|| {
        // Loads libcrypto's configuration; the library itself is linked by the openssl crate.
        openssl::init();
        // SAFETY: dlsym only looks a name up; the name is a NUL-terminated literal.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MD5_Update".as_ptr()) };
        if symbol.is_null() {
            return None;
        }
        // SAFETY: the symbol `MD5_Update` in a process linking libcrypto is OpenSSL's public
        // function of exactly this signature (md5.h, unchanged since OpenSSL 0.9.x).
        Some(unsafe { std::mem::transmute::<*mut c_void, Md5Update>(symbol) })
    })
}

fn compress_openssl(update: Md5Update, state: &mut [u32; 4], blocks: &[[u8; 64]]) {
    if blocks.is_empty() {
        return;
    }
    let mut context = Md5Context {
        a: state[0],
        b: state[1],
        c: state[2],
        d: state[3],
        bit_count_low: 0,
        bit_count_high: 0,
        data: [0; 16],
        num: 0,
    };
    // SAFETY: `context` is a valid MD5_CTX with no buffered bytes (`num == 0`), and the
    // pointer covers `blocks.len() * 64` readable bytes borrowed for the call. With nothing
    // buffered and a whole number of blocks, MD5_Update runs the block function over them
    // and writes only the context (md32_common.h HASH_UPDATE); the bit counts it keeps are
    // never read, so their wrapping does not matter.
    let status = unsafe { update(&mut context, blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) };
    assert_eq!(status, 1, "MD5_Update does not fail on valid memory");
    *state = [context.a, context.b, context.c, context.d];
}
