//! The Keep API: (method, path) → `Route`, then one handler per family (`blocks`,
//! `ops`, `admin`). A handler sees a narrow context (`context::Core`), the request head
//! and the `Session` it reads the body from and answers on; it never names the server
//! around it. Handlers return `Result`; errors become responses in one place
//! (`error::RequestError::reply`, written by the connection loop). `limiter` is the
//! request admission the connection loop applies before routing.

pub mod admin;
pub mod auth;
pub mod blocks;
pub mod body;
pub mod context;
pub mod limiter;
pub mod ops;
pub mod read;

use crate::api::context::Core;
use crate::error::RequestError;
use crate::http::reply::Reply;
use crate::http::request::Head;
use crate::http::session::Session;
use crate::locator::{is_lower_hex, starts_with_hash};

/// Every request keepring answers (keep-protocol.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// GET or HEAD of `/<locator>` or `//<locator>`.
    BlockRead {
        locator: &'a str,
        send_body: bool,
    },
    /// PUT `/<hash>[...]`: the text after `/`, which must start with the hash.
    BlockWrite {
        locator: &'a str,
    },
    BlockTouch {
        locator: &'a str,
    },
    BlockDelete {
        locator: &'a str,
    },
    Untrash {
        locator: &'a str,
    },
    Index {
        prefix: &'a str,
    },
    Mounts,
    MountBlocks {
        uuid: &'a str,
        prefix: &'a str,
    },
    /// `GET /mounts/<uuid>/quarantine`: the copies set aside after failing their MD5.
    MountQuarantine {
        uuid: &'a str,
    },
    PullList,
    TrashList,
    Options,
    Metrics,
    HealthPing,
    Miss,
}

pub fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    if method == "OPTIONS" {
        return Route::Options;
    }
    let after_slash = path.strip_prefix('/').unwrap_or("");
    let compat = after_slash.strip_prefix('/');
    match method {
        "GET" | "HEAD" => {
            let send_body = method == "GET";
            if starts_with_hash(after_slash) {
                return Route::BlockRead {
                    locator: after_slash,
                    send_body,
                };
            }
            if let Some(locator) = compat.filter(|rest| starts_with_hash(rest)) {
                return Route::BlockRead { locator, send_body };
            }
            if method == "GET" {
                return get_route(path);
            }
            Route::Miss
        }
        "PUT" if starts_with_hash(after_slash) => Route::BlockWrite { locator: after_slash },
        "PUT" => match path {
            "/pull" => Route::PullList,
            "/trash" => Route::TrashList,
            _ => match path.strip_prefix("/untrash/") {
                Some(locator) if starts_with_hash(locator) => Route::Untrash { locator },
                _ => Route::Miss,
            },
        },
        "TOUCH" if starts_with_hash(after_slash) => Route::BlockTouch { locator: after_slash },
        "DELETE" if starts_with_hash(after_slash) => Route::BlockDelete { locator: after_slash },
        _ => Route::Miss,
    }
}

fn get_route(path: &str) -> Route<'_> {
    match path {
        "/index" | "/index/" => return Route::Index { prefix: "" },
        "/mounts" => return Route::Mounts,
        "/metrics" | "/metrics.json" => return Route::Metrics,
        "/_health/ping" => return Route::HealthPing,
        _ => {}
    }
    if let Some(prefix) = path.strip_prefix("/index/") {
        return if is_prefix(prefix) {
            Route::Index { prefix }
        } else {
            Route::Miss
        };
    }
    if let Some(rest) = path.strip_prefix("/mounts/") {
        if let Some(uuid) = rest
            .strip_suffix("/quarantine")
            .filter(|uuid| !uuid.is_empty() && !uuid.contains('/'))
        {
            return Route::MountQuarantine { uuid };
        }
        if let Some((uuid, tail)) = rest.split_once("/blocks") {
            let prefix = match tail {
                "" | "/" => Some(""),
                _ => tail.strip_prefix('/').filter(|prefix| is_prefix(prefix)),
            };
            if let (false, Some(prefix)) = (uuid.is_empty() || uuid.contains('/'), prefix) {
                return Route::MountBlocks { uuid, prefix };
            }
        }
    }
    Route::Miss
}

/// An index prefix: 0 to 32 lowercase hex digits.
pub fn is_prefix(text: &str) -> bool {
    text.len() <= 32 && text.bytes().all(is_lower_hex)
}

/// Dispatch one request whose head has been read. The body, if any, is read by the
/// handler through `connection`.
pub async fn handle<'a>(core: &'a Core, session: &mut Session, head: &'a Head) -> Result<Reply<'a>, RequestError> {
    match route(&head.method, &head.path) {
        Route::BlockRead { locator, send_body } => {
            session.vary_signature = true;
            read::read(core, head, locator, send_body, session.sends_files()).await
        }
        Route::BlockWrite { locator } => blocks::write(core, session, head, locator).await,
        Route::BlockTouch { locator } => blocks::touch(core, head, locator).await,
        Route::BlockDelete { locator } => ops::delete(core, head, locator).await,
        Route::Untrash { locator } => ops::untrash(core, head, locator).await,
        Route::PullList => ops::pull_list(core, session, head).await,
        Route::TrashList => ops::trash_list(core, session, head).await,
        Route::Index { prefix } => admin::index(core, head, None, prefix).await,
        Route::MountBlocks { uuid, prefix } => admin::index(core, head, Some(uuid), prefix).await,
        Route::MountQuarantine { uuid } => admin::quarantine(core, head, uuid).await,
        Route::Mounts => admin::mounts(core, head),
        Route::Options => Ok(Reply::empty(200)),
        Route::Metrics => ops::metrics(core, head).await,
        Route::HealthPing => admin::health(core, head),
        Route::Miss => Err(RequestError::RouteMiss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";

    #[test]
    fn block_routes() {
        let signed = format!("/{HASH}+11+Aabc@1");
        assert_eq!(
            route("GET", &signed),
            Route::BlockRead {
                locator: &signed[1..],
                send_body: true
            }
        );
        let compat = format!("//{HASH}+11");
        assert_eq!(
            route("HEAD", &compat),
            Route::BlockRead {
                locator: &compat[2..],
                send_body: false
            }
        );
        assert_eq!(route("PUT", &compat), Route::Miss);
        assert_eq!(
            route("PUT", &format!("/{HASH}+12")),
            Route::BlockWrite {
                locator: &format!("{HASH}+12")
            }
        );
        assert_eq!(route("GET", &format!("/{}", HASH.to_uppercase())), Route::Miss);
        assert_eq!(route("POST", &format!("/{HASH}")), Route::Miss);
        let untrash = format!("/untrash/{HASH}+1");
        assert_eq!(route("PUT", &untrash), Route::Untrash { locator: &untrash[9..] });
        let delete = format!("/{HASH}+1");
        assert_eq!(route("DELETE", &delete), Route::BlockDelete { locator: &delete[1..] });
    }

    #[test]
    fn admin_routes() {
        assert_eq!(route("GET", "/index"), Route::Index { prefix: "" });
        assert_eq!(route("GET", "/index/6f"), Route::Index { prefix: "6f" });
        assert_eq!(route("GET", "/index/zz"), Route::Miss);
        assert_eq!(route("GET", "//index"), Route::Miss);
        assert_eq!(route("GET", "/"), Route::Miss);
        let uuid = "zzzzz-nyw5e-000000000000000";
        assert_eq!(
            route("GET", &format!("/mounts/{uuid}/blocks")),
            Route::MountBlocks { uuid, prefix: "" }
        );
        assert_eq!(
            route("GET", &format!("/mounts/{uuid}/blocks/ab")),
            Route::MountBlocks { uuid, prefix: "ab" }
        );
        assert_eq!(
            route("GET", &format!("/mounts/{uuid}/quarantine")),
            Route::MountQuarantine { uuid }
        );
        assert_eq!(route("GET", "/mounts//quarantine"), Route::Miss);
        assert_eq!(route("PUT", &format!("/mounts/{uuid}/quarantine")), Route::Miss);
        assert_eq!(route("GET", "/status.json"), Route::Miss);
        assert_eq!(route("OPTIONS", "/anything"), Route::Options);
    }
}
