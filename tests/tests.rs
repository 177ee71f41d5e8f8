//! keepring's integration tests: one binary (as ripgrep does) so the harness links once.
//!
//! Every test starts the real `keepring` binary on an ephemeral 127.0.0.1 port with its own
//! temporary volume directories (see `support`), talks HTTP/1.1 to it over loopback, and
//! looks at the volume directories on disk. Expected behaviour is keepstore 3.x as described
//! in /work/shared/keep-protocol.md and keepstore-observed.md, except for the deliberate
//! differences listed in the module docs below.

// Harness: TestServer (start/stop, captured stderr), a tiny HTTP/1.1 client, signatures.
mod support;

// PUT/GET/HEAD of blocks: round trips, sizes up to 64 MiB, 100-continue, chunked bodies,
// atomic writes, corrupt stored copies, placement over several volumes.
#[path = "it/blocks.rs"]
mod blocks;

// Permission signatures and tokens on block reads; locator syntax and routes.
#[path = "it/auth.rs"]
mod auth;

// Root-token endpoints: index, mounts, mount blocks; not-yet-built endpoints (501); health.
#[path = "it/admin.rs"]
mod admin;

// HTTP behaviour: CORS, X-Request-Id, keep-alive, pipelining, Connection: close, workers,
// request log lines.
#[path = "it/http.rs"]
mod http;

// HTTPS: the TLS listener (flags or an https InternalURL), 64 MiB over TLS, refusals,
// SIGHUP certificate reload. Restarts under HTTPS load are in restart.rs.
#[path = "it/tls.rs"]
mod tls;

// S3 volumes on a real three-node Garage cluster: keepstore's bucket layout read and
// written, trash and untrash, the emptier, race fixes (checked with a plain boto3 client).
#[path = "it/s3.rs"]
mod s3;

// Command line: flag and start-up errors exit with status 2.
#[path = "it/cli.rs"]
mod cli;

// Zero-downtime restart: listener hand-over, drain on SIGTERM, --term-pid, the drain
// timeout, SIGQUIT, and the buffer budget shared across a restart, under load.
#[path = "it/restart.rs"]
mod restart;

// contrib/systemd/keepring.service run verbatim as systemd would: READY=1, ExecReload= hand-over.
#[path = "it/systemd.rs"]
mod systemd;

// Live volumes: volume roots, mount discovery, SIGHUP config reload, stable UUIDs.
#[path = "it/volumes.rs"]
mod volumes;

// Drive health: volumes whose reads or writes keep failing (real EIO from a shut-down
// ext4, EPERM from an immutable root) leave the write rotation, are reported, and come
// back after a successful probe.
#[path = "it/health.rs"]
mod health;

// Operations: DELETE/untrash, trash and pull lists and their workers, the empty-trash
// sweep, read-only volumes, /metrics, GET latency during a large trash list.
#[path = "it/ops.rs"]
mod ops;

// The background scrubber: rotted copies found, quarantined, repaired by PUT and pull;
// a pass resumed after a restart.
#[path = "it/scrub.rs"]
mod scrub;

// Deployment from one shared cluster config.yml: each node's URL and volumes, settings
// that fail closed, the trash emptier's schedule.
#[path = "it/deploy.rs"]
mod deploy;

// The module map's rules: no cycle between top-level modules of src/; handlers never
// name the server, chores and the watcher never name the node.
#[path = "it/structure.rs"]
mod structure;
