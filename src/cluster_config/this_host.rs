//! Which `Services.Keepstore.InternalURLs` entry is this process's, decided as keepstore
//! 3.2.1 decides it (`getListenAddr` in `lib/service/cmd.go`), adapted to a server that
//! shares its port with its own successor:
//!
//! 1. `ARVADOS_SERVICE_INTERNAL_URL`, when set, names it (an entry that matches it after
//!    normalisation, else that URL on its own, with a warning, as keepstore does).
//! 2. Otherwise an entry is a candidate when its listen address (its `ListenURL`, else the
//!    URL itself) is an address of this host: a bind to that address fails with
//!    EADDRNOTAVAIL on any other host. One candidate: that one.
//! 3. Several candidates (two entries on one address, 127.0.0.1 and 127.0.0.2 on one
//!    machine): keepstore takes the first one whose port it can bind, but during a
//!    keepring restart the predecessor holds the port (SO_REUSEPORT, the hand-over), so a
//!    busy port is no signal. The entry whose port the `--term-pid` process listens on is
//!    ours (we replace that process); else the first, in sorted order, whose port nobody
//!    listens on; else it is ambiguous and start-up fails naming the way out.
//!
//! The probes are behind `HostProbe` so the rules are tested without the network.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::cluster_config::url::ServiceUrl;

/// One `InternalURLs` entry: the URL clients use and the one to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub internal: ServiceUrl,
    pub listen: ServiceUrl,
}

/// What the choice needs to know about this machine.
pub trait HostProbe {
    /// Is `address` one of this host's (can a socket be bound to it)?
    fn is_local(&self, address: SocketAddr) -> std::io::Result<bool>;
    /// Does some socket listen on exactly this address and port?
    fn in_use(&self, address: SocketAddr) -> bool;
    /// The addresses process `pid` listens on (empty when unknown).
    fn listening_of(&self, pid: u32) -> Vec<SocketAddr>;
}

/// The chosen entry and the local address to bind for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub entry: ServiceEntry,
    pub address: SocketAddr,
}

/// Choose this process's entry; `Ok(None)` when there are no entries.
pub fn choose(
    entries: &[ServiceEntry],
    env_url: Option<&str>,
    term_pid: Option<u32>,
    probe: &dyn HostProbe,
) -> Result<Option<Chosen>, String> {
    if let Some(text) = env_url.filter(|text| !text.is_empty()) {
        let wanted = ServiceUrl::parse(text).map_err(|error| format!("ARVADOS_SERVICE_INTERNAL_URL: {error}"))?;
        let entry = match entries.iter().find(|entry| entry.internal == wanted) {
            Some(entry) => entry.clone(),
            None => {
                tracing::warn!(url = %wanted, "ARVADOS_SERVICE_INTERNAL_URL has no matching InternalURLs entry; serving it anyway");
                ServiceEntry {
                    internal: wanted.clone(),
                    listen: wanted,
                }
            }
        };
        let address = first_address(&entry.listen)?;
        return Ok(Some(Chosen { entry, address }));
    }
    let mut candidates = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        match local_address(&entry.listen, probe) {
            Ok(Some(address)) => candidates.push(Chosen {
                entry: entry.clone(),
                address,
            }),
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
    match candidates.len() {
        0 if entries.is_empty() => Ok(None),
        0 => Err(format!(
            "no Services.Keepstore.InternalURLs entry has an address of this host (tried {}){}",
            list(entries.iter().map(|entry| entry.listen.to_string())),
            match problems.is_empty() {
                true => String::new(),
                false => format!("; {}", problems.join("; ")),
            }
        )),
        1 => Ok(candidates.pop()),
        _ => among_several(candidates, term_pid, probe).map(Some),
    }
}

fn among_several(candidates: Vec<Chosen>, term_pid: Option<u32>, probe: &dyn HostProbe) -> Result<Chosen, String> {
    // A wildcard listen address binds on every host: it says nothing of whose entry it is.
    if let Some(wildcard) = candidates.iter().find(|chosen| chosen.address.ip().is_unspecified()) {
        return Err(format!(
            "{} listens on a wildcard address, which matches every host; name this node's \
             Services.Keepstore.InternalURLs entry with ARVADOS_SERVICE_INTERNAL_URL",
            wildcard.entry.internal
        ));
    }
    if let Some(pid) = term_pid {
        let held: HashSet<SocketAddr> = probe.listening_of(pid).into_iter().collect();
        if let Some(found) = candidates.iter().find(|chosen| held.contains(&chosen.address)) {
            return Ok(found.clone());
        }
    }
    if let Some(free) = candidates.iter().find(|chosen| !probe.in_use(chosen.address)) {
        return Ok(free.clone());
    }
    Err(format!(
        "several Services.Keepstore.InternalURLs entries are on this host and every one is in use ({}); \
         name this node's with ARVADOS_SERVICE_INTERNAL_URL, or restart with --term-pid",
        list(candidates.iter().map(|chosen| chosen.entry.internal.to_string()))
    ))
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn first_address(url: &ServiceUrl) -> Result<SocketAddr, String> {
    url.socket_addrs()?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{url}: the host resolves to no address"))
}

/// The first of the URL's addresses that this host has; an unresolvable host is a problem
/// worth reporting only if no entry turns out to be ours.
fn local_address(url: &ServiceUrl, probe: &dyn HostProbe) -> Result<Option<SocketAddr>, String> {
    for address in url.socket_addrs()? {
        match probe.is_local(address) {
            Ok(true) => return Ok(Some(address)),
            Ok(false) => {}
            Err(error) => return Err(format!("{url}: {error}")),
        }
    }
    Ok(None)
}

/// The real machine: test binds and `/proc`.
pub struct SystemProbe;

impl HostProbe for SystemProbe {
    fn is_local(&self, address: SocketAddr) -> std::io::Result<bool> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
        let mut any_port = address;
        any_port.set_port(0);
        match socket.bind(&any_port.into()) {
            Ok(()) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn in_use(&self, address: SocketAddr) -> bool {
        let bound = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None).and_then(
            |socket| {
                // SO_REUSEADDR: a port with only TIME_WAIT connections left is free.
                socket.set_reuse_address(true)?;
                socket.bind(&address.into())
            },
        );
        matches!(bound, Err(error) if error.raw_os_error() == Some(libc::EADDRINUSE))
    }

    fn listening_of(&self, pid: u32) -> Vec<SocketAddr> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        let inodes: HashSet<u64> = entries
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter_map(|target| {
                let text = target.to_str()?;
                text.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect();
        let mut found = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                found.extend(listening_in(&text, &inodes));
            }
        }
        found
    }
}

/// Listening sockets (state 0A) of `/proc/net/tcp{,6}` text whose inode is in `inodes`.
fn listening_in(table: &str, inodes: &HashSet<u64>) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
            continue;
        };
        let owned = inode.parse::<u64>().is_ok_and(|inode| inodes.contains(&inode));
        if *state == "0A" && owned {
            found.extend(proc_address(local));
        }
    }
    found
}

/// `0100007F:62D3` or a 32-digit IPv6 form: each 32-bit word in host byte order.
fn proc_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |index: usize| -> Option<[u8; 4]> {
        let hex = address.get(index * 8..index * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    match address.len() {
        8 => Some(SocketAddr::from((word(0)?, port))),
        32 => {
            let mut bytes = [0u8; 16];
            for index in 0..4 {
                bytes[index * 4..index * 4 + 4].copy_from_slice(&word(index)?);
            }
            Some(SocketAddr::from((bytes, port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// A machine with some addresses, busy ports and one process's listeners.
    struct FakeHost {
        addresses: Vec<IpAddr>,
        busy: Vec<SocketAddr>,
        pid_listens: (u32, Vec<SocketAddr>),
    }

    impl HostProbe for FakeHost {
        fn is_local(&self, address: SocketAddr) -> std::io::Result<bool> {
            Ok(self.addresses.contains(&address.ip()))
        }
        fn in_use(&self, address: SocketAddr) -> bool {
            self.busy.contains(&address)
        }
        fn listening_of(&self, pid: u32) -> Vec<SocketAddr> {
            match pid == self.pid_listens.0 {
                true => self.pid_listens.1.clone(),
                false => Vec::new(),
            }
        }
    }

    fn entry(url: &str) -> ServiceEntry {
        let url = ServiceUrl::parse(url).unwrap();
        ServiceEntry {
            internal: url.clone(),
            listen: url,
        }
    }

    fn host(addresses: &[&str], busy: &[&str]) -> FakeHost {
        FakeHost {
            addresses: addresses.iter().map(|text| text.parse().unwrap()).collect(),
            busy: busy.iter().map(|text| text.parse().unwrap()).collect(),
            pid_listens: (0, Vec::new()),
        }
    }

    fn chosen(entries: &[ServiceEntry], env: Option<&str>, pid: Option<u32>, probe: &FakeHost) -> String {
        match choose(entries, env, pid, probe) {
            Ok(Some(chosen)) => chosen.entry.internal.to_string(),
            Ok(None) => "none".into(),
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn the_entry_on_this_hosts_address_is_chosen_whatever_its_order() {
        let entries = [
            entry("http://10.9.9.1:25107/"),
            entry("http://127.0.0.2:25107"),
            entry("http://100.64.0.9:25107/"),
        ];
        let machine = host(&["127.0.0.2"], &["127.0.0.2:25107"]);
        assert_eq!(chosen(&entries, None, None, &machine), "http://127.0.0.2:25107/");
        let elsewhere = host(&["192.0.2.1"], &[]);
        let error = chosen(&entries, None, None, &elsewhere);
        assert!(
            error.starts_with("error: no Services.Keepstore.InternalURLs"),
            "{error}"
        );
        assert_eq!(chosen(&[], None, None, &elsewhere), "none");
    }

    #[test]
    fn the_environment_names_the_entry_after_normalisation() {
        let entries = [entry("http://127.0.0.1:25107/"), entry("http://127.0.0.1:25108/")];
        let machine = host(&["127.0.0.1"], &[]);
        let named = chosen(&entries, Some("HTTP://127.0.0.1:25108"), None, &machine);
        assert_eq!(named, "http://127.0.0.1:25108/");
        let unlisted = chosen(&entries, Some("http://127.0.0.1:25109/"), None, &machine);
        assert_eq!(unlisted, "http://127.0.0.1:25109/", "served anyway, as keepstore does");
        assert!(chosen(&entries, Some("nonsense"), None, &machine).starts_with("error"));
    }

    #[test]
    fn several_on_one_host_the_predecessors_then_the_first_free() {
        let entries = [entry("http://127.0.0.1:25107/"), entry("http://127.0.0.1:25108/")];
        let first_busy = host(&["127.0.0.1"], &["127.0.0.1:25107"]);
        assert_eq!(chosen(&entries, None, None, &first_busy), "http://127.0.0.1:25108/");
        let both_free = host(&["127.0.0.1"], &[]);
        assert_eq!(chosen(&entries, None, None, &both_free), "http://127.0.0.1:25107/");
        let mut both_busy = host(&["127.0.0.1"], &["127.0.0.1:25107", "127.0.0.1:25108"]);
        let error = chosen(&entries, None, None, &both_busy);
        assert!(error.contains("ARVADOS_SERVICE_INTERNAL_URL"), "{error}");
        both_busy.pid_listens = (4242, vec!["127.0.0.1:25108".parse().unwrap()]);
        assert_eq!(
            chosen(&entries, None, Some(4242), &both_busy),
            "http://127.0.0.1:25108/"
        );
        assert!(chosen(&entries, None, Some(99), &both_busy).starts_with("error"));
    }

    #[test]
    fn wildcard_listen_urls_among_several_entries_are_ambiguous() {
        let wildcard = |internal: &str| ServiceEntry {
            internal: ServiceUrl::parse(internal).unwrap(),
            listen: ServiceUrl::parse("http://0.0.0.0:25107/").unwrap(),
        };
        let entries = [
            wildcard("http://keep0.example:25107/"),
            wildcard("http://keep1.example:25107/"),
        ];
        let machine = host(&["0.0.0.0"], &[]);
        let error = chosen(&entries, None, None, &machine);
        assert!(
            error.contains("wildcard") && error.contains("ARVADOS_SERVICE_INTERNAL_URL"),
            "{error}"
        );
        let named = chosen(&entries, Some("http://keep1.example:25107"), None, &machine);
        assert_eq!(named, "http://keep1.example:25107/");
        assert_eq!(
            chosen(&entries[..1], None, None, &machine),
            "http://keep0.example:25107/",
            "one entry: it"
        );
    }

    #[test]
    fn listen_url_is_bound_and_internal_url_is_the_identity() {
        let entries = [ServiceEntry {
            internal: ServiceUrl::parse("https://keep0.example:443/").unwrap(),
            listen: ServiceUrl::parse("http://127.0.0.1:25107/").unwrap(),
        }];
        let machine = host(&["127.0.0.1"], &[]);
        let chosen = choose(&entries, None, None, &machine).unwrap().unwrap();
        assert_eq!(chosen.address, "127.0.0.1:25107".parse().unwrap());
        assert_eq!(chosen.entry.internal.host, "keep0.example");
    }

    #[test]
    fn proc_net_tables_are_read() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:62D3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n\
           1: 0100007F:62D4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1\n\
           2: 0100007F:62D3 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let inodes: HashSet<u64> = [777].into_iter().collect();
        assert_eq!(listening_in(table, &inodes), ["127.0.0.1:25299".parse().unwrap()]);
        assert_eq!(
            proc_address("00000000000000000000000001000000:62D3"),
            Some("[::1]:25299".parse().unwrap())
        );
    }

    #[test]
    fn the_real_probe_knows_loopback_from_a_foreign_address() {
        let probe = SystemProbe;
        assert!(probe.is_local("127.0.0.1:9".parse().unwrap()).unwrap());
        assert!(!probe.is_local("100.64.0.9:9".parse().unwrap()).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert!(probe.in_use(address));
        assert!(probe.listening_of(std::process::id()).contains(&address));
        drop(listener);
        assert!(!probe.in_use(address));
    }
}
