//! The API tokens a request carries, from every source keepstore reads, in its order
//! (keep-protocol.md §2): `Authorization: Bearer|OAuth2`, the Basic password, each
//! `api_token=` query value, and the `arvados_api_token` cookie (base64url).

use base64::Engine;

use crate::http::request::Head;

/// All tokens found, first one first. Tokens are opaque and used whole.
pub fn tokens(head: &Head) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(authorization) = head.authorization.as_deref() {
        if let Some(token) = authorization_token(authorization) {
            found.push(token);
        }
    }
    found.extend(head.query_values("api_token").filter(|token| !token.is_empty()));
    if let Some(cookie) = head.cookie.as_deref() {
        found.extend(cookie_token(cookie));
    }
    found
}

fn authorization_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth2") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_string());
    }
    None
}

fn cookie_token(cookie: &str) -> Option<String> {
    let value = cookie.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == "arvados_api_token").then_some(value)
    })?;
    let engine = base64::engine::general_purpose::URL_SAFE;
    let decoded = engine
        .decode(value)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value))
        .ok()?;
    String::from_utf8(decoded).ok().filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_in_keepstore_order() {
        let head = Head {
            authorization: Some("OAuth2  v2/zzzzz-gj3su-x/secret ".into()),
            query: "a=1&api_token=q1&api_token=q2".into(),
            cookie: Some(format!(
                "x=y; arvados_api_token={}",
                base64::engine::general_purpose::URL_SAFE.encode("cookietoken")
            )),
            ..Head::default()
        };
        assert_eq!(tokens(&head), ["v2/zzzzz-gj3su-x/secret", "q1", "q2", "cookietoken"]);
    }

    #[test]
    fn basic_password_is_the_token() {
        let credentials = base64::engine::general_purpose::STANDARD.encode("user:pw123");
        let head = Head {
            authorization: Some(format!("Basic {credentials}")),
            ..Head::default()
        };
        assert_eq!(tokens(&head), ["pw123"]);
    }
}
