//! A PUT body's buffer shared by the operations that work on it at the same time: the
//! socket read filling its free end (`Room`), and the per-core hasher and the volume write
//! reading what already arrived (`Arrived`). Without it each of them took the body's `Vec`
//! by value in turn, so a stream stopped receiving while its bytes were hashed or written,
//! and eight PUTs on a core filled a third of the hasher's lanes (issue 16).
//!
//! The rules that make the sharing sound, each held by this module's API alone:
//! - the allocation never moves or shrinks while shared (there is no way to grow it
//!   here; `take_vec` hands the `Vec` back only when no view is left);
//! - bytes below `len()` are never written again: `Arrived` views cover only them, and
//!   only read;
//! - at most one `Room` exists at a time, and it covers only bytes at or past `len()`;
//!   `len()` moves forward only when that `Room` comes back (`fill`);
//! - each view holds the allocation alive (an `Rc`), so an io_uring operation that outlives
//!   its request (dropped mid-flight) still reads or writes memory that is there.

use std::cell::{Cell, UnsafeCell};
use std::rc::Rc;

use tokio_uring::buf::{IoBuf, IoBufMut};

struct Allocation {
    /// Held for its memory; its own length stays 0 while shared, the filled length is in
    /// `SharedBody::len`.
    vec: UnsafeCell<Vec<u8>>,
    base: *mut u8,
    capacity: usize,
    /// Whether a `Room` is out.
    room_out: Cell<bool>,
    /// What must live exactly as long as the memory (`keep_with_memory`).
    kept: Cell<Option<Box<dyn std::any::Any>>>,
}

/// The owner's handle: the filled length, and the views it hands out.
pub struct SharedBody {
    allocation: Rc<Allocation>,
    len: usize,
}

impl SharedBody {
    /// Share `vec` (its bytes stay, its capacity is all the body can ever hold).
    pub fn new(mut vec: Vec<u8>) -> SharedBody {
        let len = vec.len();
        let capacity = vec.capacity();
        let base = vec.as_mut_ptr();
        // SAFETY: `len` bytes are initialised; they are accounted in `SharedBody::len`
        // and the Vec is given its length back in `take_vec`.
        unsafe { vec.set_len(0) };
        SharedBody {
            allocation: Rc::new(Allocation {
                vec: UnsafeCell::new(vec),
                base,
                capacity,
                room_out: Cell::new(false),
                kept: Cell::new(None),
            }),
            len,
        }
    }

    /// Keep `guard` until the allocation is freed: now if no view is out, else when the
    /// last one is dropped (a PUT cut short while its write task still reads the body
    /// hands its buffer lease here, so the budget counts the memory until it is gone).
    pub fn keep_with_memory(&self, guard: Box<dyn std::any::Any>) {
        self.allocation.kept.set(Some(guard));
    }

    /// The bytes filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.allocation.capacity
    }

    /// The bytes filled so far, to read.
    pub fn filled(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised and never written again while
        // shared (a `Room` only covers bytes at or past `len`).
        unsafe { std::slice::from_raw_parts(self.allocation.base, self.len) }
    }

    /// A view of the filled bytes `..end` (from the start of the body, so an offset in it
    /// is an offset in the body), for an operation that reads them.
    pub fn arrived(&self, end: usize) -> Arrived {
        assert!(end <= self.len, "a view past the filled bytes");
        Arrived {
            allocation: Rc::clone(&self.allocation),
            end,
        }
    }

    /// The free end `len()..len() + bytes` (at most the capacity), to be filled by one
    /// operation and given back to `fill`.
    pub fn room(&self, bytes: usize) -> Room {
        assert!(!self.allocation.room_out.replace(true), "a second Room of one body");
        let end = (self.len + bytes).min(self.allocation.capacity);
        Room {
            allocation: Rc::clone(&self.allocation),
            start: self.len,
            end,
            init: 0,
        }
    }

    /// Take a `Room` back: the bytes it was filled with are now part of the body.
    pub fn fill(&mut self, room: Room) -> usize {
        assert!(Rc::ptr_eq(&room.allocation, &self.allocation), "a Room of another body");
        assert_eq!(room.start, self.len, "a Room taken back out of order");
        self.len += room.init;
        room.init
    }

    /// Append `bytes` (as many as fit), without a `Room` out.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> usize {
        let mut room = self.room(bytes.len());
        let count = room.put(bytes);
        self.fill(room);
        count
    }

    /// Whether no view is out: `take_vec` would succeed.
    pub fn is_alone(&self) -> bool {
        Rc::strong_count(&self.allocation) == 1
    }

    /// The buffer back as a `Vec` holding the filled bytes, once no view is out; else
    /// the handle back.
    pub fn take_vec(self) -> Result<Vec<u8>, SharedBody> {
        let len = self.len;
        match Rc::try_unwrap(self.allocation) {
            Ok(allocation) => {
                let mut vec = allocation.vec.into_inner();
                // SAFETY: the first `len` bytes were filled (by copies or by reads that
                // reported them), and `len` ≤ capacity.
                unsafe { vec.set_len(len) };
                Ok(vec)
            }
            Err(allocation) => Err(SharedBody { allocation, len }),
        }
    }
}

/// Filled bytes `..end` of a shared body, read-only; `IoBuf` for a write operation.
pub struct Arrived {
    allocation: Rc<Allocation>,
    end: usize,
}

impl Arrived {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `..end` was filled when this view was made and is never written again.
        unsafe { std::slice::from_raw_parts(self.allocation.base, self.end) }
    }

    pub fn len(&self) -> usize {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }
}

// SAFETY: the pointer is the allocation's, which the view keeps alive and which never
// moves; the `end` bytes from it are initialised and not written while the view lives.
unsafe impl IoBuf for Arrived {
    fn stable_ptr(&self) -> *const u8 {
        self.allocation.base
    }

    fn bytes_init(&self) -> usize {
        self.end
    }

    fn bytes_total(&self) -> usize {
        self.end
    }
}

/// The free end of a shared body, for one operation to fill; `IoBufMut` for a read.
pub struct Room {
    allocation: Rc<Allocation>,
    start: usize,
    end: usize,
    /// Bytes filled from `start`.
    init: usize,
}

impl Room {
    /// Bytes this room can take.
    pub fn space(&self) -> usize {
        self.end - self.start - self.init
    }

    /// Bytes filled so far.
    pub fn filled(&self) -> usize {
        self.init
    }

    /// Copy as much of `bytes` as fits after what is filled.
    pub fn put(&mut self, bytes: &[u8]) -> usize {
        let count = bytes.len().min(self.space());
        // SAFETY: `start + init .. + count` is inside the allocation, past the body's
        // filled bytes, and this room is the only view that may write there.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.allocation.base.add(self.start + self.init), count);
        }
        self.init += count;
        count
    }
}

impl Drop for Room {
    /// A room that never came back to `fill` (the read that held it was dropped with its
    /// request) lets the body hand out another; what it was filled with is not counted.
    fn drop(&mut self) {
        self.allocation.room_out.set(false);
    }
}

// SAFETY: the pointer is `start` bytes into the allocation, which the view keeps alive and
// which never moves; `end - start` bytes from it are the allocation's, unread by any other
// view until this one is given back to `fill`.
unsafe impl IoBuf for Room {
    fn stable_ptr(&self) -> *const u8 {
        // SAFETY: start ≤ capacity.
        unsafe { self.allocation.base.add(self.start) }
    }

    fn bytes_init(&self) -> usize {
        self.init
    }

    fn bytes_total(&self) -> usize {
        self.end - self.start
    }
}

// SAFETY: as for `IoBuf`; `set_init` only records how far the operation wrote.
unsafe impl IoBufMut for Room {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: start ≤ capacity.
        unsafe { self.allocation.base.add(self.start) }
    }

    unsafe fn set_init(&mut self, pos: usize) {
        if self.init < pos {
            self.init = pos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets its flag when dropped.
    struct DropFlag(Rc<Cell<bool>>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn what_is_kept_with_the_memory_goes_with_the_last_view() {
        let dropped = Rc::new(Cell::new(false));
        let mut body = SharedBody::new(Vec::with_capacity(16));
        body.extend_from_slice(b"abcd");
        let view = body.arrived(4);
        body.keep_with_memory(Box::new(DropFlag(dropped.clone())));
        drop(body);
        assert!(!dropped.get(), "a view still reads the memory");
        assert_eq!(view.bytes(), b"abcd");
        drop(view);
        assert!(
            dropped.get(),
            "the last view freed the memory and what was kept with it"
        );

        let dropped = Rc::new(Cell::new(false));
        let body = SharedBody::new(Vec::with_capacity(16));
        body.keep_with_memory(Box::new(DropFlag(dropped.clone())));
        drop(body);
        assert!(dropped.get(), "with no view out it goes with the handle");
    }

    #[test]
    fn views_read_what_arrived_while_the_room_fills_past_it() {
        let mut body = SharedBody::new(Vec::with_capacity(16));
        assert_eq!(body.extend_from_slice(b"abcd"), 4);
        let early = body.arrived(4);
        let mut room = body.room(100);
        assert_eq!(room.space(), 12, "a room ends at the capacity");
        assert_eq!(room.put(b"efgh"), 4);
        assert_eq!(early.bytes(), b"abcd");
        assert_eq!(
            body.filled(),
            b"abcd",
            "a room's bytes join the body when it is given back"
        );
        assert_eq!(body.fill(room), 4);
        assert_eq!(body.filled(), b"abcdefgh");
        let Err(body) = body.take_vec() else {
            panic!("a view is out")
        };
        drop(early);
        assert!(body.is_alone());
        let Ok(vec) = body.take_vec() else {
            panic!("no view is out")
        };
        assert_eq!(vec, b"abcdefgh");
        assert_eq!(vec.capacity(), 16);
    }

    #[test]
    fn a_view_keeps_the_memory_after_the_body_is_gone() {
        let body = SharedBody::new(b"kept".to_vec());
        let view = body.arrived(4);
        let room = body.room(8);
        drop(body);
        assert_eq!(view.bytes(), b"kept");
        assert_eq!(room.filled(), 0);
        // (An io_uring operation holding `room` may still write into it: its memory is held.)
        assert_eq!(view.bytes_init(), 4);
    }

    #[test]
    fn a_room_dropped_without_fill_frees_the_free_end() {
        let mut body = SharedBody::new(Vec::with_capacity(8));
        let mut lost = body.room(4);
        lost.put(b"lost");
        drop(lost);
        assert_eq!(body.len(), 0, "a dropped room's bytes are not the body's");
        assert_eq!(body.extend_from_slice(b"kept"), 4);
        assert_eq!(body.filled(), b"kept");
    }

    #[test]
    #[should_panic(expected = "a second Room")]
    fn one_room_at_a_time() {
        let body = SharedBody::new(Vec::with_capacity(8));
        let _first = body.room(4);
        let _second = body.room(4);
    }
}
