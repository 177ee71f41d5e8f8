//! Block buffers: a byte budget shared by every worker (`--max-buffers` × 64 MiB, as
//! keepstore's `MaxKeepBlobBuffers`) and per-worker free lists of chunk buffers.
//! A request reserves only what it holds (a streaming GET one chunk, a PUT its body), so a
//! small block never pins 64 MiB. When the budget is spent a request waits up to
//! `BUFFER_WAIT_MS_MAX` and then gets 503. The budget is one atomic: no lock is shared.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::RequestError;
use crate::limits::{
    BACKGROUND_BUDGET_POLL_MS, BUDGET_SLOTS, BUFFER_WAIT_MS_MAX, CHUNK_BYTES, FREE_CHUNKS_PER_WORKER_MAX,
    RESPONSE_HEAD_BYTES_MAX, SPARE_BODY_BUFFERS_MAX, SPARE_BODY_BYTES_MIN,
};

/// Capacity of one chunk buffer: a response head plus one chunk of block data.
pub const CHUNK_BUFFER_BYTES: usize = RESPONSE_HEAD_BYTES_MAX + CHUNK_BYTES;

const BUDGET_MAGIC: u64 = 0x6b65_6570_7269_6e67; // "keepring"
/// A slot being freed by a reclaimer (no pid is this large).
const SLOT_RECLAIMING: u32 = u32::MAX;

/// The shared page: the budget's size and what each live process holds of it.
#[repr(C)]
struct BudgetPage {
    magic: AtomicU64,
    total_bytes: AtomicU64,
    slots: [BudgetSlot; BUDGET_SLOTS],
}

#[repr(C)]
struct BudgetSlot {
    pid: AtomicU32,
    held_bytes: AtomicU64,
}

/// The byte budget of block buffers, shared by every worker of this process and, during
/// a restart, with the other keepring process: it lives in a memfd page that the
/// hand-over passes along, each process accounting what it holds in its own slot. A take
/// adds to the own slot first and then checks the sum of all slots, so two processes can
/// never both overshoot (SeqCst: the second adder always sees the first). A process that
/// died leaves its slot behind; it is reclaimed (its pid no longer exists) whenever the
/// budget looks exhausted and when a process attaches.
pub struct BufferBudget {
    page: *const BudgetPage,
    slot: usize,
    memory: OwnedFd,
    /// Finished PUT body buffers (up to `SPARE_BODY_BUFFERS_MAX`) kept for the next PUTs,
    /// their capacity held from the budget like any lease, and given up the moment a
    /// request waits for budget. A mutex, not per-core state: it is touched twice per
    /// large PUT, and any core under pressure must be able to free them.
    spares: Mutex<Vec<Vec<u8>>>,
    /// A spare was kept or taken since the last `release_idle_spares`.
    spares_used: AtomicBool,
}

// SAFETY: the page is only touched through atomics, and the mapping lives as long as self.
unsafe impl Send for BufferBudget {}
unsafe impl Sync for BufferBudget {}

impl std::fmt::Debug for BufferBudget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "BufferBudget({} of {} bytes)",
            self.in_use_bytes(),
            self.total_bytes()
        )
    }
}

impl BufferBudget {
    /// A new budget of `total_bytes`, for this process alone until it is handed over.
    pub fn new(total_bytes: u64) -> std::io::Result<Arc<Self>> {
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned at once.
        let fd = unsafe { libc::memfd_create(c"keepring-buffer-budget".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is not owned elsewhere.
        let memory = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: resizing our own memfd.
        if unsafe { libc::ftruncate(memory.as_raw_fd(), std::mem::size_of::<BudgetPage>() as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let page = map(&memory)?;
        // SAFETY: a fresh zeroed mapping of the right size.
        unsafe {
            (*page).total_bytes.store(total_bytes, Ordering::SeqCst);
            (*page).magic.store(BUDGET_MAGIC, Ordering::SeqCst);
        }
        Self::claim(page, memory)
    }

    /// Join the budget another keepring handed over; `total_bytes` (this process's
    /// `--max-buffers`) becomes the budget of both.
    pub fn attach(memory: OwnedFd, total_bytes: u64) -> std::io::Result<Arc<Self>> {
        let size = std::fs::File::from(memory.try_clone()?).metadata()?.len();
        if size < std::mem::size_of::<BudgetPage>() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "budget memory too small",
            ));
        }
        let page = map(&memory)?;
        // SAFETY: mapped with the page's size.
        if unsafe { (*page).magic.load(Ordering::SeqCst) } != BUDGET_MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a keepring budget",
            ));
        }
        unsafe { (*page).total_bytes.store(total_bytes, Ordering::SeqCst) };
        Self::claim(page, memory)
    }

    fn claim(page: *const BudgetPage, memory: OwnedFd) -> std::io::Result<Arc<Self>> {
        let pid = std::process::id();
        // SAFETY: `page` is a live mapping of a BudgetPage.
        let slots = unsafe { &(*page).slots };
        let unclaimed = BufferBudget {
            page,
            slot: usize::MAX,
            memory,
            spares: Mutex::new(Vec::new()),
            spares_used: AtomicBool::new(false),
        };
        unclaimed.reclaim_dead();
        for (index, slot) in slots.iter().enumerate() {
            if slot
                .pid
                .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                slot.held_bytes.store(0, Ordering::SeqCst);
                let mut budget = unclaimed;
                budget.slot = index;
                return Ok(Arc::new(budget));
            }
        }
        Err(std::io::Error::other(
            "every buffer budget slot is taken by a live process",
        ))
    }

    fn page(&self) -> &BudgetPage {
        // SAFETY: the mapping is valid for the life of self.
        unsafe { &*self.page }
    }

    /// The memfd, for the hand-over.
    pub fn memory(&self) -> std::io::Result<OwnedFd> {
        self.memory.try_clone()
    }

    pub fn total_bytes(&self) -> u64 {
        self.page().total_bytes.load(Ordering::Relaxed)
    }

    /// Bytes held by every process sharing the budget.
    pub fn in_use_bytes(&self) -> u64 {
        self.page()
            .slots
            .iter()
            .map(|slot| slot.held_bytes.load(Ordering::SeqCst))
            .sum()
    }

    /// Bytes held by this process.
    pub fn own_bytes(&self) -> u64 {
        self.page().slots[self.slot].held_bytes.load(Ordering::SeqCst)
    }

    fn try_take(&self, bytes: u64) -> bool {
        let own = &self.page().slots[self.slot].held_bytes;
        own.fetch_add(bytes, Ordering::SeqCst);
        if self.in_use_bytes() <= self.total_bytes() {
            return true;
        }
        own.fetch_sub(bytes, Ordering::SeqCst);
        false
    }

    /// Take `bytes` if the budget has them; else free what this process can (its spares,
    /// dead peers' slots) for the next try.
    fn take_or_make_room(&self, bytes: u64) -> bool {
        if self.try_take(bytes) {
            return true;
        }
        self.release_spare();
        self.reclaim_dead();
        false
    }

    fn give(&self, bytes: u64) {
        let before = self.page().slots[self.slot]
            .held_bytes
            .fetch_sub(bytes, Ordering::SeqCst);
        assert!(before >= bytes, "buffer budget returned more than was taken");
    }

    /// A lease for a background thread (the pull worker), waiting as long as it takes:
    /// no client waits on it, and its bytes then count like any request's. While waiting,
    /// spares are given up and dead peers' slots reclaimed, as for a request. `None` only
    /// when `bytes` exceed the whole budget.
    pub fn lease_blocking(self: &Arc<Self>, bytes: u64) -> Option<Lease> {
        if bytes > self.total_bytes() {
            return None;
        }
        while !self.take_or_make_room(bytes) {
            std::thread::sleep(Duration::from_millis(BACKGROUND_BUDGET_POLL_MS));
        }
        Some(Lease {
            budget: self.clone(),
            bytes,
        })
    }

    /// The smallest spare body buffer that fits `capacity` (and is not over twice as
    /// large: its unused pages would be memory no lease counts); its budget share is given
    /// back, the caller leases what it uses as usual.
    pub fn take_spare(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut spares = self.spares.lock().ok()?;
        let fits = |buffer: &Vec<u8>| buffer.capacity() >= capacity && buffer.capacity() / 2 <= capacity;
        let index = (0..spares.len())
            .filter(|&index| fits(&spares[index]))
            .min_by_key(|&index| spares[index].capacity())?;
        let mut buffer = spares.swap_remove(index);
        self.spares_used.store(true, Ordering::Relaxed);
        self.give(buffer.capacity() as u64);
        buffer.clear();
        Some(buffer)
    }

    /// Keep `buffer` as a spare if the budget has room for it now (replacing the smallest
    /// spare when `SPARE_BODY_BUFFERS_MAX` are kept); else free it.
    pub fn keep_spare(&self, buffer: Vec<u8>) {
        if buffer.capacity() < SPARE_BODY_BYTES_MIN {
            return;
        }
        let Ok(mut spares) = self.spares.lock() else { return };
        let mut evicted = None;
        if spares.len() >= SPARE_BODY_BUFFERS_MAX {
            let Some(smallest) = (0..spares.len()).min_by_key(|&index| spares[index].capacity()) else {
                return;
            };
            if spares[smallest].capacity() >= buffer.capacity() {
                return;
            }
            let old = spares.swap_remove(smallest);
            self.give(old.capacity() as u64);
            evicted = Some(old);
        }
        if self.try_take(buffer.capacity() as u64) {
            spares.push(buffer);
            self.spares_used.store(true, Ordering::Relaxed);
        }
        drop(spares);
        // Freed (an munmap of up to 64 MiB) after the lock, not under it.
        drop(evicted);
    }

    /// Free the spares if none was kept or taken since the last call (the supervisor calls
    /// this every `SPARE_BODY_IDLE_SECS`): a burst of concurrent PUTs leaves its buffers for
    /// the next burst, and an idle node gives their memory back.
    pub fn release_idle_spares(&self) {
        if !self.spares_used.swap(false, Ordering::Relaxed) {
            self.release_spare();
        }
    }

    /// Free the spares and their budget share (a request is waiting for budget, or the
    /// process drains and a successor shares the budget).
    pub fn release_spare(&self) {
        let released = self
            .spares
            .lock()
            .map(|mut spares| std::mem::take(&mut *spares))
            .unwrap_or_default();
        for buffer in released {
            self.give(buffer.capacity() as u64);
        }
    }

    /// Free the slots of processes that no longer exist.
    pub fn reclaim_dead(&self) {
        let own = std::process::id();
        for slot in &self.page().slots {
            let pid = slot.pid.load(Ordering::SeqCst);
            if pid == 0 || pid == own || pid == SLOT_RECLAIMING || !process_is_gone(pid) {
                continue;
            }
            // Take the slot first, then clear it: a reclaimer that loses the race touches
            // nothing, and no process can claim the slot while its bytes are cleared.
            if slot
                .pid
                .compare_exchange(pid, SLOT_RECLAIMING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let held = slot.held_bytes.swap(0, Ordering::SeqCst);
            slot.pid.store(0, Ordering::SeqCst);
            if held > 0 {
                tracing::warn!(pid, held_bytes = held, "reclaimed buffer budget of a process that died");
            }
        }
    }
}

/// A process that no longer exists, or is a zombie (dead, not yet reaped: it holds nothing).
fn process_is_gone(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    // proc(5): the state letter follows the parenthesised command name.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

impl Drop for BufferBudget {
    fn drop(&mut self) {
        if self.slot < BUDGET_SLOTS {
            let slot = &self.page().slots[self.slot];
            slot.held_bytes.store(0, Ordering::SeqCst);
            slot.pid.store(0, Ordering::SeqCst);
        }
        // SAFETY: unmapping the page mapped in `map`, which nothing references any more.
        unsafe { libc::munmap(self.page as *mut libc::c_void, std::mem::size_of::<BudgetPage>()) };
    }
}

fn map(memory: &OwnedFd) -> std::io::Result<*const BudgetPage> {
    // SAFETY: a shared read-write mapping of a memfd at least one page long.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<BudgetPage>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            memory.as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(address as *const BudgetPage)
}

/// Bytes of the budget held by one request; returned when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Lease {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A lease of nothing on the same budget (to move a real one out of a struct).
    pub fn empty(like: &Lease) -> Lease {
        Lease {
            budget: like.budget.clone(),
            bytes: 0,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// One worker's view of the budget and its own free chunk buffers (`!Send` by design).
pub struct BufferPool {
    budget: Arc<BufferBudget>,
    free_chunks: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub fn new(budget: Arc<BufferBudget>) -> Self {
        BufferPool {
            budget,
            free_chunks: RefCell::new(Vec::new()),
        }
    }

    /// Reserve `bytes`, waiting up to `BUFFER_WAIT_MS_MAX` for other requests to finish.
    pub async fn lease(&self, bytes: u64) -> Result<Lease, RequestError> {
        self.wait_for(bytes).await?;
        Ok(Lease {
            budget: self.budget.clone(),
            bytes,
        })
    }

    /// Reserve `more` bytes on top of an existing lease (a chunked body that keeps coming).
    pub async fn grow(&self, lease: &mut Lease, more: u64) -> Result<(), RequestError> {
        self.wait_for(more).await?;
        lease.bytes += more;
        Ok(())
    }

    async fn wait_for(&self, bytes: u64) -> Result<(), RequestError> {
        if bytes > self.budget.total_bytes() {
            return Err(RequestError::Busy);
        }
        let deadline = Instant::now() + Duration::from_millis(BUFFER_WAIT_MS_MAX);
        // Releases happen on any core; polling every millisecond keeps this lock-free and
        // costs nothing while the budget is not exhausted.
        while !self.budget.take_or_make_room(bytes) {
            if Instant::now() >= deadline {
                return Err(RequestError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// An empty buffer of `CHUNK_BUFFER_BYTES` capacity (the caller holds a lease for it).
    pub fn chunk(&self) -> Vec<u8> {
        match self.free_chunks.borrow_mut().pop() {
            Some(buffer) => buffer,
            None => Vec::with_capacity(CHUNK_BUFFER_BYTES),
        }
    }

    /// Give a chunk buffer back for reuse; other sizes go back to the allocator.
    pub fn recycle(&self, mut buffer: Vec<u8>) {
        let mut free = self.free_chunks.borrow_mut();
        if buffer.capacity() == CHUNK_BUFFER_BYTES && free.len() < FREE_CHUNKS_PER_WORKER_MAX {
            buffer.clear();
            free.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_returned() {
        let budget = BufferBudget::new(100).unwrap();
        assert!(budget.try_take(60));
        assert!(!budget.try_take(60));
        assert_eq!(budget.in_use_bytes(), 60);
        budget.give(60);
        assert!(budget.try_take(100));
    }

    #[test]
    fn two_attached_budgets_never_exceed_the_total() {
        let first = BufferBudget::new(100).unwrap();
        let second = BufferBudget::attach(first.memory().unwrap(), 100).unwrap();
        assert!(first.try_take(70));
        assert!(!second.try_take(40), "old + new would exceed the budget");
        assert!(second.try_take(30));
        assert_eq!(second.in_use_bytes(), 100);
        first.give(70);
        assert!(second.try_take(70));
        drop(first);
        assert_eq!(second.in_use_bytes(), 100, "a process that leaves frees its slot");
    }

    #[test]
    fn the_spare_buffer_is_held_from_the_budget_and_given_up_under_pressure() {
        let size = SPARE_BODY_BYTES_MIN * 2;
        let budget = BufferBudget::new(size as u64 * 2).unwrap();
        budget.keep_spare(Vec::with_capacity(size));
        assert_eq!(budget.in_use_bytes(), size as u64, "a kept spare counts");
        assert!(budget.take_spare(size / 4).is_none(), "over twice the need: not reused");
        let reused = budget.take_spare(size).expect("fits");
        assert!(reused.capacity() >= size && reused.is_empty());
        assert_eq!(budget.in_use_bytes(), 0, "taken back: the request leases it itself");
        budget.keep_spare(reused);
        tokio_uring::start(async {
            let pool = BufferPool::new(budget.clone());
            let lease = pool.lease(size as u64 * 2).await.expect("the spare makes room");
            assert_eq!(lease.bytes(), size as u64 * 2);
        });
        assert!(budget.take_spare(size).is_none(), "released for the waiting request");
    }

    #[test]
    fn spares_left_untouched_for_a_whole_interval_are_freed() {
        let size = SPARE_BODY_BYTES_MIN;
        let budget = BufferBudget::new(size as u64 * 64).unwrap();
        for _ in 0..SPARE_BODY_BUFFERS_MAX + 2 {
            budget.keep_spare(Vec::with_capacity(size));
        }
        let kept = (SPARE_BODY_BUFFERS_MAX * size) as u64;
        assert_eq!(budget.in_use_bytes(), kept, "at most SPARE_BODY_BUFFERS_MAX kept");
        budget.release_idle_spares();
        assert_eq!(budget.in_use_bytes(), kept, "used in this interval: kept");
        let taken = budget.take_spare(size).expect("a spare");
        budget.keep_spare(taken);
        budget.release_idle_spares();
        assert_eq!(budget.in_use_bytes(), kept, "used again in this interval: kept");
        budget.release_idle_spares();
        assert_eq!(budget.in_use_bytes(), 0, "a whole interval unused: freed");
        assert!(budget.take_spare(size).is_none());
    }

    #[test]
    fn a_background_lease_waits_for_the_budget_without_a_deadline() {
        let budget = BufferBudget::new(100).unwrap();
        assert!(budget.lease_blocking(101).is_none(), "more than the whole budget");
        let held = budget.lease_blocking(80).expect("free budget");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        let started = Instant::now();
        let waited = budget.lease_blocking(50).expect("after the release");
        assert!(started.elapsed() >= Duration::from_millis(90), "took budget still held");
        assert_eq!(budget.in_use_bytes(), 50);
        releaser.join().unwrap();
        drop(waited);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[test]
    fn lease_waits_then_answers_busy() {
        tokio_uring::start(async {
            let pool = BufferPool::new(BufferBudget::new(10).unwrap());
            let held = pool.lease(10).await.unwrap();
            assert!(
                matches!(pool.lease(11).await, Err(RequestError::Busy)),
                "larger than the budget"
            );
            drop(held);
            let mut lease = pool.lease(4).await.unwrap();
            pool.grow(&mut lease, 6).await.unwrap();
            assert_eq!(lease.bytes(), 10);
        });
    }
}
