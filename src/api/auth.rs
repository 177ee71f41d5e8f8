//! Who may do what: the system root token for admin endpoints, the management token for
//! health, permission signatures for block reads (keep-protocol.md §2).

use crate::error::RequestError;
use crate::http::request::Head;
use crate::http::token::tokens;
use crate::locator::Locator;
use crate::node::NodeState;
use crate::signature::SignatureError;

/// 3.x: no token → 401, a token that is not the root token → 403; with no root token
/// configured the admin endpoints are open, as keepstore 3.x.
pub fn require_root(node: &NodeState, head: &Head) -> Result<(), RequestError> {
    let Some(root) = node.system_root_token.as_deref() else {
        return Ok(());
    };
    let presented = tokens(head);
    if presented.is_empty() {
        return Err(RequestError::Unauthorized);
    }
    if presented.iter().any(|token| token == root) {
        Ok(())
    } else {
        Err(RequestError::Forbidden)
    }
}

/// A block read needs a valid signature for the first token when signing is on.
pub fn check_read_permission(
    node: &NodeState,
    head: &Head,
    locator: &Locator,
    now_secs: impl FnOnce() -> u64,
) -> Result<(), RequestError> {
    let Some(key) = node.signing_key.as_ref().filter(|_| node.enforce_signatures) else {
        return Ok(());
    };
    let presented = tokens(head);
    let token = presented.first().ok_or(RequestError::NoToken)?;
    key.verify(locator, token, now_secs()).map_err(|error| match error {
        SignatureError::Expired => RequestError::ExpiredSignature,
        SignatureError::Invalid => RequestError::InvalidSignature,
    })
}

/// The management token guards `/_health/ping`: 404 when none is configured.
pub fn require_management(node: &NodeState, head: &Head) -> Result<(), RequestError> {
    let Some(management) = node.management_token.as_deref() else {
        return Err(RequestError::HealthDisabled);
    };
    match head
        .authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        None => Err(RequestError::HealthUnauthorized),
        Some(token) if token.trim() == management => Ok(()),
        Some(_) => Err(RequestError::Forbidden),
    }
}

/// `/metrics`: open when no management token is configured; else `Bearer <token>` is
/// needed (401 without, 403 with another), answered without CORS headers.
pub fn require_metrics(node: &NodeState, head: &Head) -> Result<(), RequestError> {
    let Some(management) = node.management_token.as_deref() else {
        return Ok(());
    };
    match head
        .authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        None => Err(RequestError::MetricsUnauthorized),
        Some(token) if token.trim() == management => Ok(()),
        Some(_) => Err(RequestError::MetricsForbidden),
    }
}
