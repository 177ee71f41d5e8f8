//! HTTP/1.1 as keepring speaks it: request heads parsed with httparse within fixed limits
//! (`request`), request bodies framed by Content-Length or chunked (`chunked`), response
//! heads (`response`) and the tokens a request carries (`token`). Pure: the socket work
//! lives in `server::connection`.

pub mod chunked;
pub mod request;
pub mod response;
pub mod token;
