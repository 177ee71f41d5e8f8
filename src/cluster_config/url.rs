//! Service URLs as the cluster config names them (`Services.Keepstore.InternalURLs` keys,
//! `ListenURL`, `AccessViaHosts` keys, `ARVADOS_SERVICE_INTERNAL_URL`), normalised so that
//! two spellings of one endpoint compare equal: scheme and host lowercased, the scheme's
//! default port made explicit, an empty path made `/`. keepstore compares Go `url.URL`
//! values after adding the `/` only; keepring also accepts `HTTP://Host:80` for
//! `http://host/`, which names the same endpoint. Pure.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// A normalised `http` or `https` URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceUrl {
    pub scheme: String,
    /// Lowercase; an IPv6 address keeps its brackets.
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl ServiceUrl {
    pub fn parse(text: &str) -> Result<ServiceUrl, String> {
        let bad = |why: &str| format!("URL {text:?}: {why}");
        let (scheme, rest) = text.trim().split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("scheme is neither http nor https")),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(port) => port.parse::<u16>().map_err(|_| bad("bad port"))?,
            None => default_port,
        };
        Ok(ServiceUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// Every address the host resolves to, with the port (a name may resolve to several).
    pub fn socket_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
            .to_socket_addrs()
            .map(|addresses| addresses.collect())
            .map_err(|error| format!("{self}: cannot resolve {host}: {error}"))
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}{}", self.scheme, self.host, self.port, self.path)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host with brackets, port text).
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> ServiceUrl {
        ServiceUrl::parse(text).unwrap()
    }

    #[test]
    fn spellings_of_one_endpoint_are_equal() {
        let canonical = url("http://keep0.example:25107/");
        for text in [
            "http://keep0.example:25107",
            "HTTP://Keep0.Example:25107/",
            " http://keep0.example:25107/ ",
        ] {
            assert_eq!(url(text), canonical, "{text}");
        }
        assert_eq!(url("http://h"), url("http://h:80/"));
        assert_eq!(url("https://h/"), url("https://h:443"));
        assert_ne!(url("http://h:25107/"), url("https://h:25107/"));
        assert_ne!(url("http://h:25107/"), url("http://h:25108/"));
        assert_eq!(url("http://h:25107").to_string(), "http://h:25107/");
    }

    #[test]
    fn addresses_and_ipv6() {
        let v6 = url("http://[::1]:25107/");
        assert_eq!(v6.host, "[::1]");
        assert_eq!(v6.socket_addrs().unwrap(), ["[::1]:25107".parse().unwrap()]);
        assert_eq!(
            url("http://127.0.0.2:9/").socket_addrs().unwrap(),
            ["127.0.0.2:9".parse().unwrap()]
        );
        assert!(url("https://h").is_https());
    }

    #[test]
    fn malformed_urls_are_refused() {
        for text in [
            "keep0:25107",
            "ftp://h/",
            "http://:25107/",
            "http://h:port/",
            "http://h:70000/",
            "http://u@h/",
            "http://[::1/",
            "http://::1:80/",
        ] {
            assert!(ServiceUrl::parse(text).is_err(), "{text}");
        }
    }
}
