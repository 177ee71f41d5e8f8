//! The one error type of request handling and the one place it becomes an HTTP status and
//! a one-line body (keep-protocol.md §4; keepstore-observed.md wins on texts).

use std::fmt;

use crate::blocking::PoolError;

#[derive(Debug)]
pub enum RequestError {
    /// No route for this method and path (keepstore: Go's router, `Bad Request`).
    RouteMiss,
    /// Malformed HTTP (bad Content-Length, broken chunked framing): the reason is shown.
    Malformed(&'static str),
    InvalidLocator,
    InvalidSignature,
    NoToken,
    ExpiredSignature,
    /// Admin endpoint without a token.
    Unauthorized,
    /// Admin endpoint with a token that is not the system root token.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    BodyTooLarge,
    HeadTooLarge,
    /// PUT body whose MD5 is not the hash named in the path.
    HashMismatch {
        computed: String,
        path: String,
    },
    /// A stored copy whose MD5 is not its name, and no good copy elsewhere.
    ChecksumMismatch,
    /// No buffer budget within `BUFFER_WAIT_MS_MAX`.
    Busy,
    /// The helper pool's queue is full (`HELPER_QUEUE_JOBS_MAX`): the blocking part of the
    /// request was not started.
    HelpersBusy,
    /// A body arriving too slowly was cut so that another request could have its share
    /// of the buffer budget (`api::body::SlowBodies`).
    BodyTooSlow,
    /// Every write failed, not all for lack of space.
    VolumeUnavailable,
    /// Every candidate volume full, none writable, or a requested class absent.
    InsufficientStorage,
    /// A `+R` (remote cluster) locator without a local signature: keepring does not proxy
    /// to other clusters (keepstore answers 400 without `RemoteClusters`).
    RemoteLocator,
    HealthDisabled,
    HealthUnauthorized,
    /// `/metrics` without the management token / with another token: as `Unauthorized`
    /// and `Forbidden`, but without CORS headers or X-Request-Id (keepstore-observed.md).
    MetricsUnauthorized,
    MetricsForbidden,
    /// `PUT /pull` whose first locator has no size (keep-protocol.md §3.5).
    UnsizedPullList,
    /// A pull or trash list that is not JSON: the client's error, 400 with the decoder's
    /// message on one line (keepstore 3.2.1 answers 500; issue 15).
    UnreadableList(String),
    /// A volume error that fits no class above (keepstore: 500).
    Internal(String),
    /// The client went away or stalled; nothing can be answered (logged as 499).
    ClientGone,
}

/// What an error looks like on the wire.
pub struct ErrorReply {
    pub status: u16,
    pub body: String,
    /// Go's `http.Error` adds `X-Content-Type-Options: nosniff`; keepstore's handler
    /// errors do not.
    pub nosniff: bool,
    /// false only for `/metrics` refusals, which keepstore answers without CORS headers.
    pub cors: bool,
}

impl RequestError {
    pub fn reply(&self) -> ErrorReply {
        use RequestError::*;
        let (status, text, nosniff): (u16, String, bool) = match self {
            RouteMiss => (400, "Bad Request".into(), true),
            Malformed(reason) => (400, (*reason).into(), true),
            InvalidLocator => (400, "invalid locator".into(), false),
            InvalidSignature => (400, "invalid signature".into(), false),
            NoToken => (401, "no token provided in Authorization header".into(), false),
            ExpiredSignature => (401, "expired signature".into(), false),
            Unauthorized => (401, "Unauthorized".into(), true),
            Forbidden => (403, "Forbidden".into(), true),
            NotFound => (404, "file does not exist".into(), false),
            MethodNotAllowed => (405, "method not allowed".into(), false),
            BodyTooLarge => (413, "request entity too large".into(), false),
            HeadTooLarge => (431, "request header fields too large".into(), true),
            HashMismatch { computed, path } => (
                400,
                format!("content hash {computed} did not match specified locator {path}"),
                false,
            ),
            ChecksumMismatch => (502, "checksum mismatch in stored data".into(), false),
            Busy => (503, "server busy: no block buffer free, retry later".into(), false),
            HelpersBusy => (503, "server busy: helper queue full, retry later".into(), false),
            BodyTooSlow => (
                408,
                "request body too slow: cut to free its buffer for others".into(),
                false,
            ),
            VolumeUnavailable => (503, "volume unavailable".into(), false),
            InsufficientStorage => (507, "insufficient storage".into(), false),
            RemoteLocator => (400, "remote cluster locators are not served by this node".into(), false),
            HealthDisabled => (404, "disabled".into(), false),
            HealthUnauthorized => (401, "authorization required".into(), false),
            MetricsUnauthorized => (401, "Unauthorized".into(), true),
            MetricsForbidden => (403, "Forbidden".into(), true),
            UnsizedPullList => (
                400,
                "rejecting pull list containing a locator without a size hint -- this probably means \
                 keep-balance needs to be upgraded"
                    .into(),
                false,
            ),
            UnreadableList(reason) => (400, format!("unreadable list: {}", reason.replace('\n', " ")), false),
            Internal(reason) => (500, reason.clone(), false),
            ClientGone => (499, String::new(), false),
        };
        let body = if text.is_empty() { text } else { format!("{text}\n") };
        let cors = !matches!(self, MetricsUnauthorized | MetricsForbidden);
        ErrorReply {
            status,
            body,
            nosniff,
            cors,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = self.reply();
        write!(formatter, "{} {}", reply.status, reply.body.trim_end())
    }
}

impl std::error::Error for RequestError {}

impl From<PoolError> for RequestError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Full => RequestError::HelpersBusy,
            PoolError::Lost => RequestError::Internal("a helper job failed".into()),
        }
    }
}

/// Reason phrase for a status line.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_one_line() {
        let reply = RequestError::HashMismatch {
            computed: "a".into(),
            path: "b".into(),
        }
        .reply();
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body, "content hash a did not match specified locator b\n");
        assert_eq!(RequestError::NotFound.reply().body, "file does not exist\n");
        assert!(RequestError::Forbidden.reply().nosniff);
    }

    #[test]
    fn a_full_helper_queue_is_a_503_and_a_lost_job_a_500() {
        let busy = RequestError::from(PoolError::Full).reply();
        assert_eq!(
            (busy.status, busy.body.as_str()),
            (503, "server busy: helper queue full, retry later\n")
        );
        assert_eq!(RequestError::from(PoolError::Lost).reply().status, 500);
    }
}
