//! The volume watcher: its own thread, blocked in poll(2) on three things, never a timer
//! loop: inotify on every volume root and candidate directory (a `mkdir ROOT/disk3/keep`,
//! a rename or removal), `/proc/self/mountinfo` for POLLPRI (a mount or umount, which
//! inotify never reports), and a wake pipe (SIGUSR1 rescans, SIGHUP brings new sources,
//! a worker that hit an I/O error asks for a look). Each wake-up rescans, and when the set
//! of volumes changed it hands the new immutable set to its `VolumePublisher` (the node
//! publishes it in a new state; workers pick it up on their next request without taking
//! a lock).

use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use inotify::{Inotify, WatchMask};

use crate::limits::WATCHER_INBOX_EVENTS_MAX;
use crate::volume::Volume;
use crate::volumes::discovery::{self, Candidate, VolumeSources};
use crate::volumes::VolumeSet;

/// Why the watcher should look again.
#[derive(Debug)]
pub enum WatchEvent {
    Rescan(&'static str),
    Sources(VolumeSources),
    Stop,
}

/// How other threads reach the watcher: a bounded channel and a pipe to wake its poll.
#[derive(Clone)]
pub struct WatcherHandle {
    sender: crossbeam_channel::Sender<WatchEvent>,
    wake: Arc<std::io::PipeWriter>,
}

pub struct WatcherInbox {
    receiver: crossbeam_channel::Receiver<WatchEvent>,
    wake: std::io::PipeReader,
}

pub fn channel() -> io::Result<(WatcherHandle, WatcherInbox)> {
    let (reader, writer) = std::io::pipe()?;
    set_nonblocking(reader.as_raw_fd())?;
    set_nonblocking(writer.as_raw_fd())?;
    let (sender, receiver) = crossbeam_channel::bounded(WATCHER_INBOX_EVENTS_MAX);
    Ok((
        WatcherHandle {
            sender,
            wake: Arc::new(writer),
        },
        WatcherInbox { receiver, wake: reader },
    ))
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl WatcherHandle {
    /// Never blocks: safe from a worker's request path or a signal thread.
    pub fn nudge(&self, event: WatchEvent) {
        let _ = self.sender.try_send(event);
        let _ = (&*self.wake).write(&[1]);
    }
}

/// Open every candidate volume now (start-up). Errors on configured volumes are fatal.
pub fn initial_scan(sources: &VolumeSources) -> Result<VolumeSet, String> {
    let mounts = read_mountinfo().unwrap_or_default();
    let mut volumes: Vec<Arc<Volume>> = Vec::new();
    for candidate in discovery::candidates(sources, &mounts) {
        match open_candidate(&candidate, &volumes) {
            Ok(volume) => volumes.push(volume),
            Err(error) if candidate.origin == "configured" => {
                return Err(format!("cannot use volume {}: {error}", candidate.root.display()))
            }
            Err(error) => tracing::warn!(path = %candidate.root.display(), error = %error, "cannot use volume"),
        }
    }
    for (root, _) in sources.fixed_directories() {
        if !volumes
            .iter()
            .any(|volume| root.canonicalize().ok().as_deref() == Some(volume.root.as_path()))
        {
            return Err(format!("cannot use volume {}: not a directory", root.display()));
        }
    }
    for (parameters, options) in sources.fixed_buckets() {
        let volume = open_bucket(parameters, options, &volumes).map_err(|error| {
            let uuid = options.uuid.as_deref().unwrap_or("");
            format!("cannot use S3 volume {uuid}: {error}")
        })?;
        volumes.push(volume);
    }
    Ok(VolumeSet::from_shared(volumes))
}

/// Open an S3 volume (its client resolves the endpoint's host name: never on a core).
fn open_bucket(
    parameters: &crate::volume::location::S3Parameters,
    options: &crate::volume::VolumeOptions,
    taken: &[Arc<Volume>],
) -> io::Result<Arc<Volume>> {
    let volume = Volume::open_s3(parameters, options)?;
    if taken.iter().any(|other| other.uuid == volume.uuid) {
        return Err(io::Error::other(format!(
            "volume UUID {} is configured twice",
            volume.uuid
        )));
    }
    tracing::info!(
        target: "keepring::lifecycle",
        volume = %volume.uuid,
        location = %volume.device_id,
        writable = volume.allow_write,
        "S3 volume added"
    );
    Ok(Arc::new(volume))
}

fn open_candidate(candidate: &Candidate, taken: &[Arc<Volume>]) -> io::Result<Arc<Volume>> {
    let volume = Volume::open(&candidate.root, &candidate.options)?;
    if taken.iter().any(|other| other.uuid == volume.uuid) {
        return Err(io::Error::other(format!(
            "volume UUID {} already served from another path",
            volume.uuid
        )));
    }
    tracing::info!(
        target: "keepring::lifecycle",
        volume = %volume.uuid,
        path = %volume.root.display(),
        reason = candidate.origin,
        writable = volume.allow_write,
        "volume added"
    );
    Ok(Arc::new(volume))
}

fn read_mountinfo() -> io::Result<Vec<discovery::Mount>> {
    Ok(discovery::parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Where the watcher reads the volume set in force and publishes a new one (the node's
/// published state, without the watcher naming it).
pub trait VolumePublisher: Send + Sync {
    fn current_volumes(&self) -> VolumeSet;
    /// Publish `volumes` in place of the current set; nothing else of the state changes.
    fn publish_volumes(&self, volumes: VolumeSet);
}

pub fn spawn(
    publisher: Arc<dyn VolumePublisher>,
    sources: VolumeSources,
    inbox: WatcherInbox,
) -> io::Result<std::thread::JoinHandle<()>> {
    let inotify = Inotify::init()?;
    let mountinfo = std::fs::File::open("/proc/self/mountinfo")?;
    std::thread::Builder::new()
        .name("keepring-volumes".into())
        .spawn(move || {
            // The filesystem each configured volume lives on now: if its drive is later
            // unmounted, the empty directory underneath must not become the volume.
            let fixed_devices = publisher
                .current_volumes()
                .all()
                .iter()
                .map(|volume| (volume.root.clone(), volume.device))
                .collect();
            let mut watcher = Watcher {
                publisher,
                sources,
                inotify,
                mountinfo,
                inbox,
                fixed_devices,
            };
            watcher.run();
        })
}

struct Watcher {
    publisher: Arc<dyn VolumePublisher>,
    sources: VolumeSources,
    inotify: Inotify,
    mountinfo: std::fs::File,
    inbox: WatcherInbox,
    fixed_devices: HashMap<PathBuf, u64>,
}

const DIR_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

impl Watcher {
    fn run(&mut self) {
        // Watches first, then the scan: a directory created in between is still seen.
        self.rescan("start");
        let mut events = vec![0u8; 64 * 1024];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.inotify.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.mountinfo.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.inbox.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three valid pollfds; -1 waits for an event, no timer.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %io::Error::last_os_error(), "volume watcher stopped");
                return;
            }
            let mut reason = "inotify";
            if fds[0].revents != 0 {
                while self
                    .inotify
                    .read_events(&mut events)
                    .is_ok_and(|batch| batch.count() > 0)
                {}
            }
            if fds[1].revents != 0 {
                // Re-reading resets the POLLPRI condition (proc(5)).
                let mut text = String::new();
                let _ = self
                    .mountinfo
                    .rewind()
                    .and_then(|_| self.mountinfo.read_to_string(&mut text));
                reason = "mount table";
            }
            if fds[2].revents != 0 {
                let mut drain = [0u8; 64];
                while matches!((&self.inbox.wake).read(&mut drain), Ok(read) if read > 0) {}
                while let Ok(event) = self.inbox.receiver.try_recv() {
                    match event {
                        WatchEvent::Stop => return,
                        WatchEvent::Sources(sources) => {
                            self.sources = sources;
                            reason = "configuration";
                        }
                        WatchEvent::Rescan(why) => reason = why,
                    }
                }
            }
            self.rescan(reason);
        }
    }

    fn watch(&mut self, path: &Path) {
        // Re-adding is cheap and follows the path to whatever is mounted there now.
        let _ = self.inotify.watches().add(path, DIR_EVENTS);
    }

    /// Watch every source again, work out the volumes to serve, and publish them if they changed.
    fn rescan(&mut self, reason: &str) {
        self.watch_sources();
        let mounts = read_mountinfo().unwrap_or_default();
        if self.sources.discover_mounts {
            self.watch_mount_points(&mounts);
        }
        let candidates = discovery::candidates(&self.sources, &mounts);
        let current_set = self.publisher.current_volumes();
        let current = current_set.all();
        let next = self.next_volumes(&candidates, current);
        if same_volumes(current, &next) {
            return;
        }
        for old in removed_volumes(current, &next) {
            tracing::info!(
                target: "keepring::lifecycle",
                volume = %old.uuid,
                path = %old.describe(),
                reason,
                "volume removed"
            );
        }
        // Only the volumes are this thread's to change; keys and tokens stay as published.
        self.publisher.publish_volumes(VolumeSet::from_shared(next));
    }

    /// Watch each volume root with its subdirectories, and each configured volume with its parent.
    fn watch_sources(&mut self) {
        for root in self.sources.roots.clone() {
            self.watch(&root);
            for dir in discovery::root_subdirectories(&root) {
                self.watch(&dir);
            }
        }
        let roots: Vec<PathBuf> = self
            .sources
            .fixed_directories()
            .map(|(root, _)| root.to_path_buf())
            .collect();
        for root in roots {
            if let Some(parent) = root.parent() {
                self.watch(parent);
            }
            self.watch(&root);
        }
    }

    /// Watch every mount point but `/`.
    fn watch_mount_points(&mut self, mounts: &[discovery::Mount]) {
        // A drive usually arrives with its keep dir (mount table event); a fresh one
        // gets it by mkdir, seen through a watch on its mount point.
        for mount in mounts.iter().filter(|mount| mount.mount_point != Path::new("/")) {
            self.watch(&mount.mount_point);
        }
    }

    /// The volumes to serve for `candidates`: the current one where unchanged, a newly opened one otherwise.
    fn next_volumes(&mut self, candidates: &[Candidate], current: &[Arc<Volume>]) -> Vec<Arc<Volume>> {
        let mut next: Vec<Arc<Volume>> = Vec::new();
        for candidate in candidates {
            let device = std::fs::metadata(&candidate.root).map(|metadata| metadata.dev()).ok();
            if candidate.origin == "configured"
                && !is_on_first_filesystem(&mut self.fixed_devices, &candidate.root, device)
            {
                tracing::warn!(
                    target: "keepring::lifecycle",
                    path = %candidate.root.display(),
                    "configured volume is on another filesystem than before (drive unmounted?): not serving it"
                );
                continue;
            }
            match serving_volume(current, candidate, device) {
                Some(volume) => next.push(volume.clone()),
                None => match open_candidate(candidate, &next) {
                    Ok(volume) => next.push(volume),
                    Err(error) => tracing::warn!(path = %candidate.root.display(), error = %error, "cannot use volume"),
                },
            }
        }
        // S3 volumes stay as opened while their configuration stays the same.
        for (parameters, options) in self.sources.fixed_buckets() {
            let serving = current.iter().find(|volume| {
                volume.options == *options
                    && volume
                        .s3
                        .as_ref()
                        .is_some_and(|bucket| bucket.parameters == *parameters)
            });
            match serving {
                Some(volume) => next.push(volume.clone()),
                None => match open_bucket(parameters, options, &next) {
                    Ok(volume) => next.push(volume),
                    Err(error) => {
                        tracing::warn!(location = %parameters.endpoint_url(), error = %error, "cannot use S3 volume")
                    }
                },
            }
        }
        next
    }
}

/// Whether `root` is still on the filesystem it was first seen on (recording `device` at first sight).
fn is_on_first_filesystem(fixed_devices: &mut HashMap<PathBuf, u64>, root: &Path, device: Option<u64>) -> bool {
    let known = *fixed_devices.entry(root.to_path_buf()).or_insert(device.unwrap_or(0));
    Some(known) == device
}

/// The current volume that already serves `candidate` on `device`, with the same options.
fn serving_volume<'a>(
    current: &'a [Arc<Volume>],
    candidate: &Candidate,
    device: Option<u64>,
) -> Option<&'a Arc<Volume>> {
    current.iter().find(|volume| {
        volume.root == candidate.root && Some(volume.device) == device && volume.options == candidate.options
    })
}

/// Whether `next` holds exactly the volumes of `current` (the same opened volumes).
fn same_volumes(current: &[Arc<Volume>], next: &[Arc<Volume>]) -> bool {
    next.len() == current.len()
        && next
            .iter()
            .all(|volume| current.iter().any(|old| Arc::ptr_eq(old, volume)))
}

/// The volumes of `current` that `next` no longer holds.
fn removed_volumes<'a>(current: &'a [Arc<Volume>], next: &'a [Arc<Volume>]) -> impl Iterator<Item = &'a Arc<Volume>> {
    current
        .iter()
        .filter(|old| !next.iter().any(|volume| Arc::ptr_eq(old, volume)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_volume_is_served_only_on_its_first_filesystem() {
        let mut fixed_devices = HashMap::new();
        let root = Path::new("/data/keep");
        assert!(is_on_first_filesystem(&mut fixed_devices, root, Some(7)));
        assert!(is_on_first_filesystem(&mut fixed_devices, root, Some(7)));
        assert!(
            !is_on_first_filesystem(&mut fixed_devices, root, Some(8)),
            "drive unmounted"
        );
        assert!(
            !is_on_first_filesystem(&mut fixed_devices, root, None),
            "directory gone"
        );
    }

    #[test]
    fn volume_sets_compare_by_opened_volume() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| Arc::new(Volume::open_directory(&dir.path().join(name)).unwrap());
        let (first, second) = (open("a"), open("b"));
        let reopened = open("a");
        let current = vec![first.clone(), second.clone()];
        assert!(same_volumes(&current, &[second.clone(), first.clone()]));
        assert!(!same_volumes(&current, &[first.clone(), reopened.clone()]));
        assert!(!same_volumes(&current, std::slice::from_ref(&first)));
        let next = [first.clone(), reopened];
        let removed: Vec<_> = removed_volumes(&current, &next).collect();
        assert!(removed.len() == 1 && Arc::ptr_eq(removed[0], &second));
    }
}
