//! Every limit keepring enforces, in one place, each with its unit in the name and the
//! arithmetic that justifies it. Command-line flags that override a limit say so; the
//! compile-time assertions at the bottom keep the relations between limits honest.

/// Largest block Keep stores: `BlockSize = 1<<26` in keepstore (keep-protocol.md §1).
pub const BLOCK_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Bytes one read from the socket may bring in while a request head is being parsed.
/// Keep clients send a few hundred bytes of headers; 16 KiB leaves room for long cookies
/// and tokens while 1,000 idle connections cost only 16 MiB.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A request head (request line + headers + blank line) larger than this is refused with
/// 431. It must fit in one read buffer, because httparse needs the head contiguous.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// Headers per request; httparse parses into a fixed array of this many slots.
pub const HEADER_COUNT_MAX: usize = 64;

/// Time allowed from the first byte of a request to the end of its head.
pub const HEADER_TIMEOUT_MS: u64 = 10_000;

/// Time a keep-alive connection may sit idle between requests before it is closed.
pub const IDLE_TIMEOUT_MS: u64 = 65_000;

/// Time allowed for any single socket read of a request body or a single socket write of
/// a response to make progress. A 64 MiB transfer to a client reading 64 KiB/s still
/// makes progress every second, so only a stalled peer trips it.
pub const IO_STALL_TIMEOUT_MS: u64 = 60_000;

/// `--max-connections` default: 4096 per worker, and at most half the open-files limit
/// (raised at start to its hard limit), which leaves the other half for block files,
/// volume watches and rings. At the limit a worker closes its least recently used idle
/// keep-alive connection to admit the new client; with all busy, it waits for one to end
/// (the kernel's accept queue holds the rest).
pub const CONNECTIONS_PER_WORKER_DEFAULT_MAX: usize = 4096;

/// Share of the open-files limit connections may take by default (1/N).
pub const OPEN_FILES_PER_CONNECTION_SHARE: u64 = 2;

/// A worker at its connection limit warns at most this often (counters count each time).
pub const LIMIT_WARNING_INTERVAL_MS: u64 = 10_000;

/// How often each worker counts its requests in progress for `/metrics` (keepstore
/// refreshes its request gauges every second too).
pub const ACTIVITY_COUNT_MS: u64 = 1_000;

/// Submission queue entries per ring: enough for every connection of a busy worker to have
/// an operation queued between two submissions.
pub const RING_ENTRIES: u32 = 1024;

/// How long workers get to build their rings and start accepting.
pub const WORKERS_READY_TIMEOUT_MS: u64 = 10_000;

/// Most descriptors one hand-over carries (listeners of up to 1024 workers + the budget).
pub const FDS_MAX: usize = 1025;

/// Bounds on a hand-over conversation (lifecycle::handover): text size and time.
pub const HANDOVER_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
pub const HANDOVER_TIMEOUT_MS: u64 = 5_000;

/// Events waiting for the watcher; more are dropped (a rescan covers them all).
pub const WATCHER_INBOX_EVENTS_MAX: usize = 64;

/// Processes that can share one budget at once (an old one draining, a new one serving,
/// and room for a restart that fails half-way).
pub const BUDGET_SLOTS: usize = 16;

/// Chunk sizes above this are refused outright (no block is larger than 64 MiB anyway;
/// the caller enforces the body limit on the running total).
pub const CHUNK_SIZE_DIGITS_MAX: u8 = 15;

/// Backlog of each listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;

/// TCP_NOTSENT_LOWAT of every client connection: a send queues at most this much beyond
/// what the peer's window takes, and the socket reads as writable only once its queue has
/// drained below it. A block then leaves in bursts into a window the client has emptied
/// instead of trickling into one it is still draining. Measured (one worker, 16 clients
/// of 64 MiB GETs on the other core): without it the hasher's batches followed the
/// clients' reads and split into small groups (lanes ~70% full, ~1.9-2.0 GB/s, 31-35 ms
/// of server CPU per GET, now and then a run at 2.7); with 4 or 16 KiB, 2.6-2.9 GB/s,
/// 22-25 ms, lanes 99-100% full in every run; 64 KiB 2.4-2.7, 1 MiB as without. Two
/// clients of 64 MiB GETs: 2-3% slower (818-835 vs 842-861 MB/s); 8 PUTs: the same.
pub const SEND_NOTSENT_LOWAT_BYTES: i32 = 16 * 1024;

/// Bytes moved per step of a block transfer: read from disk, hashed, written to the socket
/// (GET) or read from the socket, hashed, written to disk (PUT). OpenSSL MD5 runs at ~0.77
/// GB/s per core here, so one step holds the core ~0.17 ms. Measured beside one 64 MiB GET
/// on one worker: 4 KiB GETs had p50/p99 1.98/2.41 ms with 512 KiB steps and 0.67/0.99 ms
/// with 128 KiB (and 2.8x the req/s), the big GET giving up a fair share (515 → 392 MB/s).
pub const CHUNK_BYTES: usize = 128 * 1024;

/// Bytes one socket read of a PUT body with a Content-Length may take (into the body's own
/// buffer, `shared_body`): the read is one copy out of the socket and the hash runs later
/// in the hasher's batches, so a longer read does not hold the core the way a GET's
/// read-and-hash step does; fewer, longer reads cost fewer ring round trips and wake-ups.
pub const BODY_READ_BYTES: usize = 1024 * 1024;

/// A PUT body is received at most this far ahead of its hash (`hasher::BodyStream`): the
/// hasher waits to gather every receiving stream's bytes into one batch's lanes, and a
/// stream this far ahead waits for it. Bounds the hashing left when the body is whole
/// (about 4 ms on one stream).
pub const HASH_LAG_MAX_BYTES: usize = 2 * 1024 * 1024;

/// The most of one PUT stream's waiting bytes a hasher batch takes, so one batch holds
/// the core about a millisecond even with 16 streams far behind.
pub const HASH_SLICE_MAX_BYTES: usize = 256 * 1024;

/// The least a batch takes of a waiting PUT stream when others have less waiting: the
/// batch takes equal lengths from its streams (every lane busy in every round), but not
/// so little that its overhead counts.
pub const HASH_SLICE_MIN_BYTES: usize = 64 * 1024;

/// A block write starts the writeback of every this many bytes as soon as they are in the
/// page cache (sync_file_range), so its final fdatasync waits for little: measured here on
/// a 64 MiB write, fdatasync took 24 ms without and 0.4 ms with, each call under 0.5 ms.
pub const WRITEBACK_STEP_BYTES: usize = 4 * 1024 * 1024;

/// Writeback starts queued for the writeback thread; beyond this (a slow disk) a range is
/// skipped, and the final fdatasync writes it.
pub const WRITEBACK_QUEUE_MAX: usize = 256;

/// A block is written to its file this many bytes per write (a streamed PUT body too, as
/// soon as this much is waiting): each write is a trip through the ring. Measured with two
/// 64 MiB PUTs at a time: 5.93 req/s with 128 KiB steps, 6.35 with 512 KiB, 6.32 with
/// 1 MiB; 4 KiB GETs beside one PUT stream kept p99 at 2.7-3.3 ms in all three.
pub const WRITE_STEP_BYTES: usize = 512 * 1024;

/// A block written past the page cache (`O_DIRECT`, `volume::io::BlockWriter`) is written
/// this many bytes per write, a streamed PUT body as soon as this much is waiting: no copy
/// holds the core, and the drive and ext4 (which turns the reserved, unwritten extent into
/// written one write at a time) do better with big writes. Measured with eight 64 MiB PUTs
/// at a time on one worker (scripts/bench/put-load.py, 8 s rounds, MB/s): 1 MiB steps
/// 603/671, 4 MiB 788/813, 8 MiB 813/964, 16 MiB 1073/1031/998/922, 32 MiB 788/931,
/// 64 MiB (one write at the end) 687/729; through the cache in 512 KiB steps 780/905.
pub const DIRECT_WRITE_STEP_BYTES: usize = 16 * 1024 * 1024;

/// On a filesystem without locks, where the sweep cannot tell a live writer's temp file
/// (`volume::temp`) from a dead one's, one untouched this long is a dead write's: a live
/// write's temp file lives minutes at most (a body must arrive within 60 s plus its length
/// at 256 KiB/s: about 5 minutes for 64 MiB; a drain waits 5 minutes by default); a day
/// leaves room for clock jumps and suspended machines, since the age is mtime against the
/// wall clock. Where locks work, the lock alone decides, whatever the age.
pub const TEMP_FILE_STALE_SECS: u64 = 24 * 3600;

/// A writer whose new temp file a sweep removed before the writer could lock it
/// (`volume::temp::claim`) creates another under the next name; that happening this many
/// times in a row means something else is wrong (a sweep running in a loop), and the write
/// fails instead of spinning. One retry is the most a single sweep can cause.
pub const TEMP_CREATE_ATTEMPTS_MAX: u64 = 4;

/// How often the temp sweep looks whether the process it replaced has exited before its
/// first pass: a fifth of a second costs nothing and delays that pass by no more.
pub const PREDECESSOR_EXIT_POLL_MS: u64 = 200;

/// How often the temp files of dead writes are looked for (also once at start). Apart
/// from the trash emptier's schedule: it deletes nothing a client or an operator could
/// still want.
pub const TEMP_SWEEP_INTERVAL_SECS: u64 = 3600;

/// A PUT whose announced body is at least this large is written to its first volume while
/// it arrives, so the disk works during the transfer instead of after it.
pub const STREAMED_WRITE_BYTES_MIN: u64 = 1024 * 1024;

/// Room kept in front of the first chunk of a GET for the response head, so that head and
/// the first bytes of the block leave in one write.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 2 * 1024;

/// `--max-buffers` default, in units of 64 MiB (keepstore's `MaxKeepBlobBuffers`).
pub const MAX_BUFFERS_DEFAULT: u64 = 128;

/// One unit of `--max-buffers`: a whole block, the chunk a body is leased ahead by, and
/// the chunk buffer a PUT compares an existing copy through, so `--max-buffers 1` still
/// takes a 64 MiB PUT, chunked or not.
pub const BUFFER_UNIT_BYTES: u64 = BLOCK_BYTES_MAX + 2 * (RESPONSE_HEAD_BYTES_MAX + CHUNK_BYTES) as u64;

/// How long a request waits for buffer budget before it is answered 503 (clients retry
/// 503 after a back-off).
pub const BUFFER_WAIT_MS_MAX: u64 = 5_000;

/// How often a background thread (the pull worker) retries the budget while it waits (it
/// waits without a deadline: no client is waiting on it).
pub const BACKGROUND_BUDGET_POLL_MS: u64 = 10;

/// Default lifetime of a permission signature: 2 weeks, keepstore's `BlobSigningTTL` 336h.
pub const BLOB_SIGNING_TTL_SECS_DEFAULT: u64 = 14 * 24 * 3600;

/// Length of a locator's hash: 32 hex digits of MD5.
pub const HASH_HEX_LEN: usize = 32;

/// A volume with less free space than this is full for writes (keepstore: one block).
pub const VOLUME_FREE_BYTES_MIN: u64 = BLOCK_BYTES_MAX;

/// Text of an index response is listed off the cores (a helper job, `blocking`) in pieces
/// of about this size (a piece ends after the block directory that reaches it), or of
/// `INDEX_PIECE_DIRS_MAX` block directories, whichever comes first; one piece is listed
/// while the one before it is sent, so a stream holds two at most. The directory bound is
/// 1/64 of a full volume's 4,096: a helper thread stays on one walk for at most that many
/// directory reads (a few ms from the page cache, ~0.6 s of seeks on a cold disk) before
/// the queue's other jobs (a DELETE, a touch) get their turn.
pub const INDEX_CHUNK_BYTES: usize = 64 * 1024;
pub const INDEX_PIECE_DIRS_MAX: usize = 64;

/// Threads of the helper pool (`blocking`), the one way blocking work leaves the cores:
/// trash and untrash, touch, free-space readings, index pieces, list parsing. Their work
/// waits on disks, not on CPUs, so the count is set by how many disks should be kept busy
/// at once, not by cores: 8 lets every volume of an 8-disk node list its index for
/// keep-balance (which asks each mount at once) or serve a DELETE at the same time. Idle,
/// each costs a parked thread (its stack is touched only as deep as a job goes).
pub const HELPER_THREADS: usize = 8;

/// Helper jobs waiting for a thread; one more is refused at once with 503 (the core never
/// waits for room). An index stream keeps one job queued at most (its next piece) and the
/// other requests one each while they wait, so 1,024 covers that many admin requests in
/// flight, far more than keep-balance and the operators send; a queued job is a boxed
/// closure of a few hundred bytes plus what it carries (a walk's remaining directory
/// names: ~4,096 short strings, ~130 KiB, at most).
pub const HELPER_QUEUE_JOBS_MAX: usize = 1024;

/// A PUT checks a volume's free space against its last statvfs reading, not a statvfs of
/// its own (which can wait: a hung disk, NFS), less what this process's writes have taken
/// since (`volume::io::FreeSpace`). A reading older than this is refreshed on the helper
/// pool, and the write that notices goes on with the old one; the fallocate of a big write
/// (and ENOSPC of a small one) stays the final word, so a stale reading costs only where
/// the refusal comes from.
pub const FREE_SPACE_READING_AGE_MS_MAX: u64 = 1_000;

const _: () = assert!(HEADER_BYTES_MAX <= READ_BUFFER_BYTES);
const _: () = assert!(CHUNK_BYTES as u64 <= BLOCK_BYTES_MAX);
const _: () = assert!(BLOCK_BYTES_MAX.is_multiple_of(CHUNK_BYTES as u64));
const _: () = assert!(RESPONSE_HEAD_BYTES_MAX < CHUNK_BYTES);
const _: () = assert!(HELPER_THREADS > 0 && HELPER_QUEUE_JOBS_MAX >= HELPER_THREADS);
const _: () = assert!(INDEX_PIECE_DIRS_MAX > 0);

/// PUT body buffers smaller than this are not kept as the budget's spare (the allocator
/// reuses small ones by itself; a fresh 64 MiB one costs 16,384 page faults, ~14% of a
/// 64 MiB PUT's CPU, measured).
pub const SPARE_BODY_BYTES_MIN: usize = 1024 * 1024;

/// How many finished PUT buffers the budget keeps (one per PUT running at once, up to
/// this): with one kept, two concurrent 64 MiB PUTs cost 165 ms CPU each instead of 146;
/// with 4 kept, 8 concurrent ones spent 5-7% of their CPU zeroing fresh pages. They count
/// against the buffer budget (MaxKeepBlobBuffers), are freed the moment a request waits
/// for budget, and once `SPARE_BODY_IDLE_SECS` pass without a PUT using one.
pub const SPARE_BODY_BUFFERS_MAX: usize = 16;

/// Spare PUT buffers none of which was used for this long (up to twice this) are freed.
pub const SPARE_BODY_IDLE_SECS: u64 = 10;

/// Chunk buffers a worker keeps for reuse after their request ends (64 × 130 KiB ≈
/// 8 MiB per worker at most); more are freed.
pub const FREE_CHUNKS_PER_WORKER_MAX: usize = 64;

/// After a drain starts, a connection idle between requests gets this long for its next
/// request to arrive (it may be on the wire already) before it is closed (up to
/// `WATCH_SWEEP_MS` later: the sweeper closes it).
pub const DRAIN_IDLE_GRACE_MS: u64 = 300;

/// How often each worker's sweeper looks for connections past their deadline
/// (`http::watch`): a timeout fires up to this much late, which no timeout here (the
/// shortest is `DRAIN_IDLE_GRACE_MS`) minds.
pub const WATCH_SWEEP_MS: u64 = 100;

/// `--drain-timeout-secs` default: how long a draining process waits for its requests.
pub const DRAIN_TIMEOUT_SECS_DEFAULT: u64 = 300;

/// After the last response on a connection the write side is shut and the peer's leftover
/// bytes (pipelined requests) are read and dropped for up to this long, so the close is a
/// FIN and not an RST that could destroy the response still in the client's buffer.
pub const LINGER_MS_MAX: u64 = 2_000;

/// A volume whose write failed with an I/O error sits out of the write rotation this long,
/// then is tried again (it may have come back).
pub const VOLUME_RETRY_MS: u64 = 10_000;

/// The drive-health window (`volume::health`): a volume's read and write errors are
/// counted over the last minute, in `DRIVE_ERROR_BUCKETS` buckets (so an error ages out
/// 55 to 60 s after it happened). A minute is long enough to see a drive that keeps
/// failing behind `VOLUME_RETRY_MS` (which lets one write through every 10 s) and short
/// enough that a burst of errors long past does not count against a drive that is fine.
pub const DRIVE_ERROR_WINDOW_SECS: u64 = 60;
pub const DRIVE_ERROR_BUCKETS: usize = 12;

/// Read errors, or write errors, a volume may have in the window and stay in the write
/// rotation; one more makes it unhealthy until a probe succeeds. A healthy drive gives no
/// EIO at all, so five in a minute are no accident; and since a write I/O error already
/// keeps a volume out for `VOLUME_RETRY_MS`, sequential writes meet a failing volume once
/// per 10 s at most, six times a minute: a higher bound (8) would catch a volume that
/// fails every retried write only under concurrent writes. With 4, the fifth failed retry
/// (40 s after the first) takes it out.
pub const DRIVE_ERRORS_MAX: u64 = 4;

/// How often an unhealthy writable volume is probed (a `DRIVE_PROBE_BYTES` temp file
/// written, fdatasync'd, read back and removed, on a thread of its own, never a core):
/// a probe costs one small synced write, so every 5 s is nothing even to a slow disk, and
/// a drive that came back is in the rotation again within 5 s.
pub const DRIVE_PROBE_INTERVAL_MS: u64 = 5_000;
pub const DRIVE_PROBE_BYTES: usize = 4096;

/// Largest `PUT /trash` or `PUT /pull` body. keep-balance sends one list per server; a
/// trash item is ~110 bytes of JSON, so 64 MiB holds ~600,000 items, more than a day of
/// garbage on a large node. The body is leased from the buffer budget like a block.
pub const LIST_BODY_BYTES_MAX: u64 = BLOCK_BYTES_MAX;

/// Items one trash or pull list may hold (a queue limit; each item is at least ~40 bytes
/// of JSON, so a full-size body cannot exceed it by much more than 1.6×).
pub const LIST_ITEMS_MAX: usize = 1_000_000;

/// `--trash-lifetime-secs` default: keepstore's `BlobTrashLifetime` 336h.
pub const TRASH_LIFETIME_SECS_DEFAULT: u64 = 14 * 24 * 3600;

/// `--trash-check-interval-secs` default: keepstore's `BlobTrashCheckInterval` 24h.
pub const TRASH_CHECK_INTERVAL_SECS_DEFAULT: u64 = 24 * 3600;

/// Trash list workers, pull list workers and deleters per volume in an emptier pass,
/// each a thread, when the config does not say (keepstore's `BlobTrashConcurrency`,
/// `BlobReplicateConcurrency` and `BlobDeleteConcurrency` defaults).
pub const CHORE_WORKERS_DEFAULT: usize = 4;

/// The pull worker: time to connect to a peer, and time any single read or write of the
/// transfer may stall (a 64 MiB block at 1 MiB/s still makes progress every second).
pub const PULL_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const PULL_IO_STALL_TIMEOUT_MS: u64 = 60_000;

/// Largest response head the pull worker reads from a peer.
pub const PULL_RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

const _: () = assert!(LIST_BODY_BYTES_MAX <= BLOCK_BYTES_MAX);
const _: () =
    assert!(DRIVE_ERROR_BUCKETS > 1 && (DRIVE_ERROR_WINDOW_SECS * 1000).is_multiple_of(DRIVE_ERROR_BUCKETS as u64));
// A volume failing every retried write (one per VOLUME_RETRY_MS) must be able to pass
// DRIVE_ERRORS_MAX inside the window's shortest span (one bucket less than the whole).
const _: () = assert!(
    (DRIVE_ERRORS_MAX + 1) * VOLUME_RETRY_MS
        <= DRIVE_ERROR_WINDOW_SECS * 1000 * (DRIVE_ERROR_BUCKETS as u64 - 1) / DRIVE_ERROR_BUCKETS as u64
);

/// A request body must arrive within this grace plus its length at
/// `BODY_RATE_BYTES_PER_SEC_MIN`: 64 MiB gets 60 s + 256 s, about keepstore's 5-minute
/// RequestTimeout. Past it the connection is closed and the body's buffer lease returned.
pub const BODY_GRACE_MS: u64 = 60_000;
pub const BODY_RATE_BYTES_PER_SEC_MIN: u64 = 256 * 1024;

/// When a request waits for buffer budget, every this often it cuts (408) the slowest
/// body of 1 MiB or more in progress whose average rate is below
/// `BODY_RATE_BYTES_PER_SEC_MIN` after `SLOW_BODY_AGE_MIN_MS`: a trickling client gives
/// way instead of an honest one waiting for it (the no-hold-and-wait property of whole
/// leases stays: the slowest always yields).
pub const SLOW_BODY_CHECK_MS: u64 = 100;
pub const SLOW_BODY_AGE_MIN_MS: u64 = 2_000;

/// A full scrub pass of every volume this often by default (`--scrub-interval-secs`):
/// monthly, as Ceph's deep scrub is weekly on far larger pools and a disk's own patrol
/// read is monthly to weekly. At the default rate a 16 TB drive takes about 3.7 days.
pub const SCRUB_INTERVAL_SECS_DEFAULT: u64 = 30 * 24 * 3600;
/// Scrub reads per volume, MB/s by default (`--scrub-rate-mb`): about a third of what
/// one spinning disk streams, a few percent of an NVMe drive's, and a tenth of a core's
/// single-stream MD5.
pub const SCRUB_RATE_MB_DEFAULT: u64 = 50;
/// The first pass after start waits this long (or one interval, if shorter), so a
/// restart's own work (handover, temp sweep) is over before the volumes are read.
pub const SCRUB_START_DELAY_SECS: u64 = 60;
/// Where a pass stands is saved at most this often, and when it ends: a restart re-reads
/// at most this many seconds of scrubbing.
pub const SCRUB_STATE_SAVE_SECS: u64 = 5;
/// The scrubber hands the hasher this much at a time: a request's chunk that lands in the
/// same batch waits for it, so a piece costs a 4 KiB GET at most ~40 µs (16 KiB at the
/// slowest single-stream MD5 seen, 0.43 GB/s) instead of a whole 128 KiB chunk's ~300 µs.
pub const SCRUB_HASH_PIECE_BYTES: usize = 16 * 1024;
const _: () = assert!(CHUNK_BYTES.is_multiple_of(SCRUB_HASH_PIECE_BYTES));

/// Longest a scrub chunk waits for its core to be quiet (no request begun for a
/// millisecond) before it is read anyway: under a load that never pauses a volume is
/// still scrubbed at up to 128 KiB per 10 ms, about 13 MB/s (a 16 TB drive in two weeks,
/// inside the default 30-day interval).
pub const SCRUB_GIVE_WAY_MS_MAX: u64 = 10;

/// A scrubbed copy nobody had cached is dropped from the page cache this much at a time
/// (one helper-thread call each): at most this much per volume sits in the cache for the
/// scrubber's sake.
pub const SCRUB_UNCACHE_BYTES: u64 = 8 * 1024 * 1024;
const _: () = assert!(SCRUB_UNCACHE_BYTES.is_multiple_of(CHUNK_BYTES as u64));

/// How often each worker looks for volumes to start or stop scrubbing (hot-added and
/// removed drives), and how often a scrub waiting for its next pass checks its volume.
pub const SCRUB_RECHECK_MS: u64 = 1_000;

/// Ciphertext one socket read of a TLS connection may bring in. Four full TLS records
/// (16 KiB of plaintext each, RFC 8446 §5.1, plus their few bytes of framing and tag): a
/// 64 MiB PUT over TLS takes ~1,000 trips through the ring instead of ~4,000 with one
/// record per read. Only body reads use it: a connection waiting for a head reads one
/// record at a time, so an idle TLS connection holds ~16 KiB more than a plain one (and
/// rustls's own state).
pub const TLS_READ_BYTES: usize = 4 * TLS_RECORD_WIRE_BYTES_MAX;
/// Largest TLS record on the wire: 16 KiB of plaintext, a 5-byte header and up to 256
/// bytes of expansion (RFC 8446 §5.2).
pub const TLS_RECORD_WIRE_BYTES_MAX: usize = 16 * 1024 + 5 + 256;
/// Plaintext rustls encrypts ahead of the socket (its `set_buffer_limit`): a whole block
/// chunk and the response head in front of it become records in one go and leave in one
/// write, as the plain path sends them.
pub const TLS_SEND_BUFFER_BYTES: usize = CHUNK_BYTES + 2 * RESPONSE_HEAD_BYTES_MAX;
/// The TLS certificate and key are re-read this often even without a SIGHUP, as
/// keepstore does (lib/service/tls.go: an hourly ticker), so a certificate renewed on
/// disk is served within the hour.
pub const TLS_RELOAD_INTERVAL_SECS: u64 = 3600;
/// Longest a closing TLS connection waits to send its close_notify alert.
pub const TLS_CLOSE_NOTIFY_MS_MAX: u64 = 1_000;
const _: () = assert!(TLS_READ_BYTES >= TLS_RECORD_WIRE_BYTES_MAX);

// ---- the S3 client (s3) ---------------------------------------------------------------

/// An S3 volume's ConnectTimeout when its config gives none: keepstore's
/// `s3DefaultConnectTimeout` (services/keepstore/s3_volume.go: one minute).
pub const S3_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// An S3 volume's ReadTimeout when its config gives none: keepstore's
/// `s3DefaultReadTimeout` (ten minutes). keepring applies it to every socket read and
/// write of a request (the wait for the response head included), not to the whole
/// transfer: a 64 MiB object at any rate that makes progress is not cut.
pub const S3_READ_TIMEOUT_MS_DEFAULT: u64 = 600_000;
/// Idle keep-alive connections kept per endpoint per thread. A core's S3 traffic is a few
/// concurrent requests per volume; more idle sockets than that only wait for the store to
/// close them. Connections beyond it close when their response ends.
pub const S3_IDLE_CONNECTIONS_PER_ENDPOINT_MAX: usize = 4;
/// A request on a reused idle connection that fails before any response byte (the store
/// closed it while idle) is sent again on a fresh connection this many times; no other
/// failure is retried.
pub const S3_STALE_RETRIES_MAX: u32 = 1;
/// Bytes one socket read of an S3 response may bring into the connection's own buffer
/// (heads, error and listing bodies, chunked bodies). Object bodies of known length are
/// read straight into the caller's buffer instead.
pub const S3_READ_BUFFER_BYTES: usize = 64 * 1024;
/// A response head larger than this is a protocol error. S3 heads are a few hundred bytes
/// (a dozen headers, x-amz-* ids); 16 KiB is what keepring allows its own clients.
pub const S3_RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Headers per S3 response; httparse parses into a fixed array of this many slots.
pub const S3_RESPONSE_HEADER_COUNT_MAX: usize = 64;
/// An S3 error document (`<Error><Code>…`) is read up to this size; a longer one is cut
/// (its code comes first) and its connection not reused.
pub const S3_ERROR_BODY_BYTES_MAX: usize = 16 * 1024;
/// Keys asked for per ListObjectsV2 page: S3's own maximum (the store answers at most
/// 1,000 whatever is asked).
pub const S3_LIST_KEYS_MAX: u32 = 1_000;
/// A ListObjectsV2 page larger than this is a protocol error: 1,000 entries of ~350 bytes
/// of XML each (a 1 KiB key at most, dates, ETags, sizes, storage class) is ~1.4 MiB.
pub const S3_LIST_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Other small XML answers (CopyObject's result) are read up to this size.
pub const S3_SMALL_BODY_BYTES_MAX: usize = 64 * 1024;
/// Lifetime of a request's presigned URL. It only has to be valid when the store reads
/// the request head, just after signing; 15 minutes is the clock skew S3 tolerates in
/// SigV4 header auth, so a store whose clock runs that far ahead still accepts it.
pub const S3_PRESIGN_EXPIRES_SECS: u64 = 900;
/// After a timed-out S3 socket operation the socket is shut down, which completes the
/// operation in the kernel at once; this long is allowed for it to come back with its
/// buffer before the buffer is given up for lost (it then stays with the ring).
pub const S3_SHUTDOWN_GRACE_MS: u64 = 1_000;
/// Plaintext an https S3 connection encrypts ahead of the socket (rustls's
/// `set_buffer_limit`): a PUT's body leaves in writes of this much, 256 for a 64 MiB block
/// instead of 1,024 at rustls's 64 KiB default.
pub const S3_TLS_SEND_BUFFER_BYTES: usize = 256 * 1024;
const _: () = assert!(S3_RESPONSE_HEAD_BYTES_MAX <= S3_READ_BUFFER_BYTES);
const _: () = assert!(S3_ERROR_BODY_BYTES_MAX <= S3_SMALL_BODY_BYTES_MAX);
const _: () = assert!(S3_SMALL_BODY_BYTES_MAX <= S3_LIST_BODY_BYTES_MAX);
