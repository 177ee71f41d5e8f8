//! What an S3 request can end in besides success, and what a bad client configuration
//! is. The S3 volume decides what each means for Keep (a missing block, a failing
//! volume); here they only keep apart what the store said from what the wire did.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum S3Error {
    /// The object is not there: 404 with `NoSuchKey`, or a 404 to a HEAD (no body to say
    /// more). A 404 naming another code (`NoSuchBucket`) is a `Store` error.
    NotFound,
    /// The store answered with an error: its HTTP status and, from the XML error body,
    /// its S3 `<Code>` and `<Message>` (empty when the body had none).
    Store { status: u16, code: String, message: String },
    /// No connection within the connect timeout, or a socket read or write that made no
    /// progress within the read timeout. The connection was shut down.
    Timeout,
    /// The connection failed (refused, reset, closed early).
    Io(io::Error),
    /// `get_all`: the object is larger than the caller allows.
    TooLarge { size: u64, max: u64 },
    /// The store's answer is not well-formed HTTP or S3 (the reason is shown).
    Protocol(String),
}

impl S3Error {
    /// The S3 error code, if the store sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Store { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }
}

/// `text` on one line, for Display: the store's message could hold newlines.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for S3Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Error::NotFound => write!(formatter, "S3: object not found"),
            S3Error::Store { status, code, message } => {
                write!(formatter, "S3 store error: HTTP {status}")?;
                if !code.is_empty() {
                    write!(formatter, " {}", one_line(code))?;
                }
                if !message.is_empty() {
                    write!(formatter, ": {}", one_line(message))?;
                }
                Ok(())
            }
            S3Error::Timeout => write!(formatter, "S3: timed out"),
            S3Error::Io(error) => write!(formatter, "S3: {}", one_line(&error.to_string())),
            S3Error::TooLarge { size, max } => {
                write!(formatter, "S3: object of {size} bytes is larger than the {max} allowed")
            }
            S3Error::Protocol(reason) => write!(formatter, "S3: malformed response: {}", one_line(reason)),
        }
    }
}

impl std::error::Error for S3Error {}

impl From<io::Error> for S3Error {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::TimedOut {
            S3Error::Timeout
        } else {
            S3Error::Io(error)
        }
    }
}

/// A client configuration that cannot work (bad endpoint URL, https, an unresolvable
/// host, a bucket name that cannot be a host name in virtual-host style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "S3 client configuration: {}", one_line(&self.0))
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line() {
        let error = S3Error::Store {
            status: 400,
            code: "BadDigest".into(),
            message: "The Content-MD5\nyou specified\r\ndid not match".into(),
        };
        assert_eq!(
            error.to_string(),
            "S3 store error: HTTP 400 BadDigest: The Content-MD5 you specified did not match"
        );
        assert_eq!(error.code(), Some("BadDigest"));
        let bare = S3Error::Store {
            status: 503,
            code: String::new(),
            message: String::new(),
        };
        assert_eq!(bare.to_string(), "S3 store error: HTTP 503");
        assert_eq!(bare.code(), None);
    }

    #[test]
    fn timed_out_io_is_a_timeout() {
        assert!(matches!(
            S3Error::from(io::Error::from(io::ErrorKind::TimedOut)),
            S3Error::Timeout
        ));
        assert!(matches!(
            S3Error::from(io::Error::from(io::ErrorKind::ConnectionReset)),
            S3Error::Io(_)
        ));
    }
}
