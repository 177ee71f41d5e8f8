//! HTTP/1.1 as keepring speaks it, the wire side of every request: request heads parsed
//! with httparse within fixed limits (`request`), request bodies framed by Content-Length
//! or chunked (`chunked`), response heads (`response`), the tokens a request carries
//! (`token`), what a handler answers (`reply`) and the one connection's session that reads
//! and writes all of these on the socket (`session`).

pub mod chunked;
pub mod reply;
pub mod request;
pub mod response;
pub mod session;
pub mod tls_channel;
pub mod token;
pub mod watch;
