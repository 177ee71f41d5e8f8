//! The per-connection loop: read a head through the `Session`, admit it through the
//! request limiter, route it to its handler, write or finish the reply, log it, and go on
//! with the next request on the same connection or close it.

use std::rc::Rc;
use std::time::Instant;

use tokio_uring::net::TcpStream;

use crate::api::limiter::Rejected;
use crate::api::{self, Route};
use crate::error::RequestError;
use crate::http::reply::{Reply, Response, TEXT_PLAIN};
use crate::http::request::{Framing, Head};
use crate::http::session::Session;
use crate::http::tls_channel::TlsChannel;
use crate::limits::READ_BUFFER_BYTES;
use crate::server::worker::{Answered, LiveConnection, Worker};

/// Serve requests on one connection until it closes.
pub async fn serve(stream: TcpStream, worker: &Worker, live: &LiveConnection) {
    // An HTTPS listener's connection shakes hands with the certificate in force now.
    let tls = match &worker.tls {
        None => None,
        Some(server_tls) => match TlsChannel::new(server_tls.config()) {
            Ok(channel) => Some(channel),
            Err(error) => {
                tracing::warn!(worker = worker.id(), error = %error, "cannot start a TLS connection");
                return;
            }
        },
    };
    let mut session = Session::new(stream, Rc::clone(&worker.gate), tls, Rc::clone(&live.watch));
    // One head for the connection's life: each request's is parsed into it.
    let mut head = Head::default();
    let linger = loop {
        match session.read_head(&mut head).await {
            Ok(true) => {}
            Ok(false) | Err(RequestError::ClientGone) => break false,
            Err(error) => break refuse_head(worker, live, &mut session, &error).await,
        }
        let (status, aborted) = serve_one(worker, live, &mut session, &head).await;
        if !session.buffered().is_empty() {
            // A pipelined request is already here and may be served without waiting on
            // anything: let the core's other tasks in first.
            tokio::task::yield_now().await;
        }
        if session.close_after {
            // A cut stream must look cut (no FIN after a complete-looking body): no linger.
            break status != 499 && !aborted;
        }
    };
    if linger {
        session.linger_close().await;
    } else {
        session.shutdown();
    }
}

/// A head that could not be read or parsed: answer it, log it; linger if answered.
async fn refuse_head(worker: &Worker, live: &LiveConnection, session: &mut Session, error: &RequestError) -> bool {
    session.begin_request(&Head::default(), true);
    worker.write_request_id(&mut session.request_id);
    worker.write_http_date(&mut session.date);
    let answered = answer_error(session, error).await.is_ok();
    worker.log_request(&Answered {
        head: &Head::default(),
        peer: Some(live.peer),
        status: error.reply().status,
        bytes_in: 0,
        bytes_out: 0,
        elapsed: std::time::Duration::ZERO,
        request_id: &session.request_id,
    });
    answered
}

/// One request, head read: admit, route, answer, log. Returns its status and whether
/// its response was cut short.
async fn serve_one(worker: &Worker, live: &LiveConnection, session: &mut Session, head: &Head) -> (u16, bool) {
    let started = Instant::now();
    live.idle_since.set(None);
    session.begin_request(head, worker.gate.began().is_some());
    match &head.request_id {
        Some(id) => {
            session.request_id.clear();
            session.request_id.push_str(id);
        }
        None => worker.write_request_id(&mut session.request_id),
    }
    worker.write_http_date(&mut session.date);
    {
        let mut text = live.request.borrow_mut();
        for part in [
            head.method.as_str(),
            " ",
            head.path.as_str(),
            " ",
            session.request_id.as_str(),
        ] {
            text.push_str(part);
        }
    }
    // keepstore's limiter: /metrics and the health check are never held back.
    let limiter = &worker.core.services.limiter;
    let exempt =
        !limiter.is_limited() || matches!(api::route(&head.method, &head.path), Route::Metrics | Route::HealthPing);
    let admitted = match exempt {
        true => Ok(None),
        false => limiter.admit().await.map(Some),
    };
    let serving = admitted.is_ok().then(|| worker.core.serving());
    let outcome = match &admitted {
        Ok(_) => {
            live.admitted.set(Some(started));
            dispatch(worker, session, head).await
        }
        Err(Rejected) => {
            // An empty 503 at once, as keepstore's; an unread body closes the connection.
            session.continue_pending = false;
            Ok(Reply::empty(503))
        }
    };
    let (status, bytes_out, aborted) = finish(session, outcome).await;
    drop(serving);
    // One clock read serves the log line and the connection's place in the idle order.
    let finished = Instant::now();
    worker.log_request(&Answered {
        head,
        peer: Some(live.peer),
        status,
        bytes_in: session.body_bytes_in,
        bytes_out,
        elapsed: finished.duration_since(started),
        request_id: &session.request_id,
    });
    live.request.borrow_mut().clear();
    live.admitted.set(None);
    live.idle_since.set(Some(finished));
    (status, aborted)
}

/// Write the handler's reply, or its error; returns the status, the body bytes sent and
/// whether the response was cut short (an error after its head left).
async fn finish(session: &mut Session, outcome: Result<Reply<'_>, RequestError>) -> (u16, u64, bool) {
    let outcome = match outcome {
        Ok(Reply::Full(response)) => {
            // An unread body makes the connection unusable for the next request.
            session.close_after |= !session.body_complete();
            return match session.send(response).await {
                Ok((status, bytes_out)) => (status, bytes_out, false),
                Err(_) => (499, 0, false),
            };
        }
        Ok(Reply::Stream(streamed)) => {
            session.close_after |= !session.body_complete();
            session.send_stream(streamed).await
        }
        Err(error) => Err(error),
    };
    match outcome {
        Ok((status, bytes_out)) => (status, bytes_out, false),
        Err(error) if session.response_started => {
            session.close_after = true;
            (error.reply().status, 0, true)
        }
        Err(error) => {
            session.close_after |= !session.body_complete() || matches!(error, RequestError::ClientGone);
            let (status, bytes_out) = answer_error(session, &error).await.unwrap_or((499, 0));
            (status, bytes_out, false)
        }
    }
}

async fn dispatch<'a>(worker: &'a Worker, session: &mut Session, head: &'a Head) -> Result<Reply<'a>, RequestError> {
    // Only PUT carries a block; any other body is read and dropped (small) or refused.
    if head.method != "PUT" && head.framing.is_some() {
        // No `100 Continue`: nothing but a PUT body is wanted. A small body is dropped so
        // the connection can go on; a large one is not read at all and the connection
        // closes after the answer.
        session.continue_pending = false;
        match head.framing {
            Some(Framing::Length(length)) if length > READ_BUFFER_BYTES as u64 => session.close_after = true,
            _ => session.discard_body(READ_BUFFER_BYTES).await?,
        }
    }
    api::handle(&worker.core, session, head).await
}

async fn answer_error(session: &mut Session, error: &RequestError) -> Result<(u16, u64), RequestError> {
    let reply = error.reply();
    if matches!(error, RequestError::ClientGone) {
        return Ok((reply.status, 0));
    }
    let mut response = Response {
        status: reply.status,
        content_type: Some(TEXT_PLAIN),
        extra: Vec::new(),
        body: reply.body.into_bytes(),
        cors: reply.cors,
    };
    if reply.nosniff {
        response.extra.push("X-Content-Type-Options: nosniff".into());
    }
    session.send(response).await
}
