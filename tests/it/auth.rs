//! Block reads with permission signatures (keep-protocol.md §2, keepstore-observed.md
//! "GET / HEAD"), locator syntax and block routes.

use crate::support::*;

const DATA: &[u8] = b"hello keep\n";
const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";

/// A signing server holding `DATA`.
fn server_with_block() -> TestServer {
    let server = TestServer::start();
    server.put_block(DATA);
    server
}

fn get(server: &TestServer, target: &str, token: Option<&str>) -> Response {
    let mut request = Request::get(target);
    if let Some(token) = token {
        request = request.token(token);
    }
    server.request(request)
}

fn assert_error(response: &Response, status: u16, body: &str) {
    assert_eq!(response.status, status, "{}", response.summary());
    assert_eq!(response.text(), body, "{}", response.summary());
    assert!(
        response
            .header("Content-Type")
            .is_some_and(|value| value.starts_with("text/plain")),
        "error Content-Type: {}",
        response.summary()
    );
}

#[test]
fn signed_get_with_the_signing_token_succeeds() {
    let server = server_with_block();
    let response = get(&server, &format!("/{}", signed_locator_for(DATA)), Some(USER_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
}

#[test]
fn unsigned_get_with_token_is_400_invalid_signature() {
    let server = server_with_block();
    let response = get(&server, &format!("/{HASH}+11"), Some(USER_TOKEN));
    assert_error(&response, 400, "invalid signature\n");
    assert_eq!(response.header("Vary"), Some("X-Keep-Signature"));
}

#[test]
fn signed_get_without_token_is_401() {
    let server = server_with_block();
    let response = get(&server, &format!("/{}", signed_locator_for(DATA)), None);
    assert_error(&response, 401, "no token provided in Authorization header\n");
}

#[test]
fn unsigned_get_without_token_is_401() {
    let server = server_with_block();
    let response = get(&server, &format!("/{HASH}+11"), None);
    assert_error(&response, 401, "no token provided in Authorization header\n");
}

#[test]
fn expired_signature_is_401() {
    let server = server_with_block();
    let expired = signed_locator_with(
        HASH,
        11,
        USER_TOKEN,
        SIGNING_KEY,
        SIGNING_TTL_SECS_DEFAULT,
        now_secs() - 3600,
    );
    let response = get(&server, &format!("/{expired}"), Some(USER_TOKEN));
    assert_error(&response, 401, "expired signature\n");
}

#[test]
fn expired_signature_with_wrong_hmac_is_still_401_expired() {
    let server = server_with_block();
    let expiry = now_secs() - 3600;
    let locator = format!("{HASH}+11+A{}@{expiry:08x}", "0".repeat(40));
    let response = get(&server, &format!("/{locator}"), Some(USER_TOKEN));
    assert_error(&response, 401, "expired signature\n");
}

#[test]
fn signature_for_another_token_is_400() {
    let server = server_with_block();
    let locator = signed_locator(HASH, 11, OTHER_TOKEN);
    let response = get(&server, &format!("/{locator}"), Some(USER_TOKEN));
    assert_error(&response, 400, "invalid signature\n");
}

#[test]
fn signature_made_with_another_key_is_400() {
    let server = server_with_block();
    let expiry = now_secs() + 1000;
    let locator = signed_locator_with(HASH, 11, USER_TOKEN, "someotherkey", SIGNING_TTL_SECS_DEFAULT, expiry);
    let response = get(&server, &format!("/{locator}"), Some(USER_TOKEN));
    assert_error(&response, 400, "invalid signature\n");
}

#[test]
fn signature_made_with_another_ttl_is_400() {
    let server = server_with_block();
    let expiry = now_secs() + 1000;
    let locator = signed_locator_with(HASH, 11, USER_TOKEN, SIGNING_KEY, 3600, expiry);
    let response = get(&server, &format!("/{locator}"), Some(USER_TOKEN));
    assert_error(&response, 400, "invalid signature\n");
}

#[test]
fn tampered_or_malformed_signatures_are_400() {
    let server = server_with_block();
    let good = signed_locator_for(DATA);
    let (prefix, expiry) = good.split_once('@').expect("sig@expiry");
    let mut tampered = prefix.to_string();
    let last = tampered.pop().expect("signature digit");
    tampered.push(if last == '0' { '1' } else { '0' });
    for locator in [format!("{tampered}@{expiry}"), format!("{prefix}@zzzzzzzz")] {
        let response = get(&server, &format!("/{locator}"), Some(USER_TOKEN));
        assert_error(&response, 400, "invalid signature\n");
    }
}

#[test]
fn oauth2_scheme_is_accepted() {
    let server = server_with_block();
    let response = server.request(
        Request::get(&format!("/{}", signed_locator_for(DATA)))
            .header("Authorization", &format!("OAuth2 {USER_TOKEN}")),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
}

#[test]
fn api_token_query_parameter_is_accepted() {
    let server = server_with_block();
    let target = format!("/{}?api_token={USER_TOKEN}", signed_locator_for(DATA));
    let response = get(&server, &target, None);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
}

#[test]
fn v2_token_is_used_whole_for_signing_and_checking() {
    let server = TestServer::start();
    let token = "v2/zzzzz-gj3su-077z32aux8dg2s1/3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi";
    let put = server.request(Request::put(&format!("/{HASH}"), DATA).token(token));
    assert_eq!(put.status, 200, "{}", put.summary());
    let locator = put.text().trim_end().to_string();
    let expiry = u64::from_str_radix(locator.rsplit('@').next().expect("expiry"), 16).expect("hex expiry");
    assert_eq!(
        locator,
        signed_locator_with(HASH, 11, token, SIGNING_KEY, SIGNING_TTL_SECS_DEFAULT, expiry)
    );
    let response = get(&server, &format!("/{locator}"), Some(token));
    assert_eq!(response.status, 200, "{}", response.summary());
}

#[test]
fn signed_head_without_size_hint_is_200() {
    let server = server_with_block();
    let expiry = now_secs() + 1000;
    let signature = sign(HASH, USER_TOKEN, SIGNING_KEY, SIGNING_TTL_SECS_DEFAULT, expiry);
    let response = server.request(Request::head(&format!("/{HASH}+A{signature}@{expiry:08x}")).token(USER_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.header("Content-Length"), Some("11"));
}

#[test]
fn get_without_size_hint_is_405() {
    let server = server_with_block();
    let expiry = now_secs() + 1000;
    let signature = sign(HASH, USER_TOKEN, SIGNING_KEY, SIGNING_TTL_SECS_DEFAULT, expiry);
    for target in [format!("/{HASH}+A{signature}@{expiry:08x}"), format!("/{HASH}")] {
        let response = get(&server, &target, Some(USER_TOKEN));
        assert_error(&response, 405, "method not allowed\n");
    }
}

#[test]
fn extra_hint_after_signature_is_ignored() {
    let server = server_with_block();
    let target = format!("/{}+Kzzzzz", signed_locator_for(DATA));
    let response = get(&server, &target, Some(USER_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
}

#[test]
fn remote_cluster_locator_without_local_signature_is_400_and_with_one_is_served() {
    let server = server_with_block();
    let hash = md5_hex(DATA);
    let remote = format!("/{hash}+{}+Rzzzzz-{}@6b191671", DATA.len(), "0".repeat(40));
    let response = get(&server, &remote, Some(USER_TOKEN));
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(response.text().matches('\n').count(), 1);
    // A locally signed locator that also names a remote cluster is a local read.
    let both = format!("/{}+Rzzzzz-{}@6b191671", signed_locator_for(DATA), "0".repeat(40));
    let response = get(&server, &both, Some(USER_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
}

#[test]
fn range_header_is_ignored() {
    let server = server_with_block();
    let response = server.request(
        Request::get(&format!("/{}", signed_locator_for(DATA)))
            .token(USER_TOKEN)
            .header("Range", "bytes=0-3"),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
}

#[test]
fn malformed_locators_are_400_invalid_locator() {
    let server = server_with_block();
    for target in [format!("/{HASH}++11"), format!("/{HASH}+11+"), format!("/{HASH}0+11")] {
        let response = get(&server, &target, Some(USER_TOKEN));
        assert_error(&response, 400, "invalid locator\n");
    }
}

#[test]
fn paths_that_are_not_block_locators_are_400_bad_request() {
    let server = server_with_block();
    let targets = [
        "/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz+11".to_string(),
        format!("/{}+11", HASH.to_ascii_uppercase()),
        format!("/{}+11", &HASH[..31]),
        "/".to_string(),
        "/xyz".to_string(),
        "/status.json".to_string(),
    ];
    for target in targets {
        let response = get(&server, &target, Some(USER_TOKEN));
        assert_error(&response, 400, "Bad Request\n");
    }
}

#[test]
fn double_slash_signed_locator_get_works() {
    let server = server_with_block();
    let response = get(&server, &format!("//{}", signed_locator_for(DATA)), Some(USER_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
}

#[test]
fn put_to_double_slash_hash_is_400() {
    let server = TestServer::start();
    let response = server.request(Request::put(&format!("//{HASH}"), DATA).token(USER_TOKEN));
    assert_error(&response, 400, "Bad Request\n");
    assert!(block_dir_entries(server.volume(0), HASH).is_empty());
}

#[test]
fn put_to_non_hex_or_uppercase_hash_is_400() {
    let server = TestServer::start();
    for target in [
        "/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz".to_string(),
        format!("/{}", HASH.to_ascii_uppercase()),
    ] {
        let response = server.request(Request::put(&target, DATA));
        assert_error(&response, 400, "Bad Request\n");
    }
}

#[test]
fn post_is_400_bad_request() {
    let server = TestServer::start();
    let response = server.request(Request::new("POST", &format!("/{HASH}")).body(DATA));
    assert_error(&response, 400, "Bad Request\n");
}

#[test]
fn missing_block_is_404() {
    let server = TestServer::start();
    let locator = signed_locator(HASH, 11, USER_TOKEN);
    let response = get(&server, &format!("/{locator}"), Some(USER_TOKEN));
    assert_error(&response, 404, "file does not exist\n");
    assert_eq!(response.header("Vary"), Some("X-Keep-Signature"));
    let head = server.request(Request::head(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(head.status, 404, "{}", head.summary());
}

#[test]
fn signature_helper_matches_keepstore_observed_example() {
    // keepstore-observed.md "Signatures": a real keepstore 3.2.1 signature.
    assert_eq!(
        signed_locator_with(HASH, 11, ROOT_TOKEN, SIGNING_KEY, SIGNING_TTL_SECS_DEFAULT, 0x6b19_1671),
        "6f09f2b353b6d63069f770b90e2b112c+11+A6355089e609ece08faad2c9dd002bda72d77f710@6b191671"
    );
}
