#!/usr/bin/env python3
"""Round-trip blocks through a running keepring with the real Arvados Python SDK.

This is the "real client" test: it drives `arvados.KeepClient` (arvados-python-client,
the version pinned in tests/python/constraints.txt) against one keepring server, with
no Arvados API server, the way keep-protocol.md section 9 describes. It is started by
scripts/sdk-test.sh, which sets up the venv, starts the server and passes it in through
the environment:

    ARVADOS_KEEP_SERVICES      base URL of the server, e.g. http://127.0.0.1:PORT/
    ARVADOS_API_TOKEN          token the client sends (any token; PUTs get signed for it)
    KEEPRING_BLOB_SIGNING_KEY  the server's blob signing key (to check and make signatures)
    KEEPRING_BLOB_SIGNING_TTL_S  the server's signature TTL in seconds (default 1209600)
    KEEPRING_VOLUMES           optional, colon-separated volume roots to check on disk

The SDK reads ARVADOS_* settings once per process (environment over settings.conf), so
they must be set before arvados is first used; `KeepClient()` then treats the listed
URL as a "proxy" service. Every request uses num_retries=0: one attempt, no backoff, so
a failure shows up at once instead of after the SDK's 4 s, 8 s, ... retry sleeps.

Prints one line per check and ends with "sdk_roundtrip: N passed, N failed"; exits 1 if
any check failed.
"""

import hashlib
import hmac
import importlib.metadata
import os
import re
import sys
import time
import traceback

SMALL_BLOCK = b"hello keepring\n"
LARGE_BLOCK_BYTES = 10 * 1024 * 1024
# libcurl sends "Expect: 100-continue" for uploads over 1 MiB and waits 1 s for the
# interim response before sending the body anyway; a PUT that takes longer than this
# means the server did not answer "100 Continue" (section 9: 1.05 s vs 0.05 s).
LARGE_PUT_SECONDS_MAX = 0.9
# Set by scripts/sdk-test.sh --s3: the PUT's time then includes the S3 store's own write
# (three Garage replicas), so it says nothing about '100 Continue'; the directory-volume
# run checks that.
PUT_TIMED = os.environ.get("KEEPRING_PUT_TIMED", "1") == "1"
# A missing block with num_retries=0 is one request; allow plenty for a debug build.
NOT_FOUND_SECONDS_MAX = 2.0
# How far the signature expiry may be from now + TTL (clock steps between PUT and check).
EXPIRY_SLACK_SECONDS = 300

SIGNED_LOCATOR_RE = re.compile(r"^([0-9a-f]{32})\+([0-9]+)\+A([0-9a-f]{40})@([0-9a-f]{8})$")


def require_env(name):
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"sdk_roundtrip: environment variable {name} is not set (run scripts/sdk-test.sh)")
    return value


SERVICE_URL = require_env("ARVADOS_KEEP_SERVICES")
API_TOKEN = require_env("ARVADOS_API_TOKEN")
SIGNING_KEY = require_env("KEEPRING_BLOB_SIGNING_KEY")
SIGNING_TTL_S = int(os.environ.get("KEEPRING_BLOB_SIGNING_TTL_S", "1209600"))
VOLUMES = [v for v in os.environ.get("KEEPRING_VOLUMES", "").split(":") if v]

import arvados  # noqa: E402  (after the environment checks: the SDK reads them once)
import arvados.errors  # noqa: E402
import pycurl  # noqa: E402


def signature(block_hash, expiry_hex):
    """keep-protocol.md section 2: HMAC-SHA1(key, hash@token@expiry@ttl-hex)."""
    message = f"{block_hash}@{API_TOKEN}@{expiry_hex}@{SIGNING_TTL_S:x}"
    return hmac.new(SIGNING_KEY.encode(), message.encode(), hashlib.sha1).hexdigest()


def check_signed_locator(locator, data):
    """The PUT answer must be hash+size+A<sig>@<exp>, signed for our token."""
    match = SIGNED_LOCATOR_RE.match(locator)
    assert match, f"not a signed locator hash+size+A<40 hex>@<8 hex>: {locator!r}"
    block_hash, size, sig, expiry_hex = match.groups()
    assert block_hash == hashlib.md5(data).hexdigest(), f"hash in {locator!r} is not the MD5 of the data"
    assert int(size) == len(data), f"size in {locator!r} is not {len(data)}"
    expected_expiry = time.time() + SIGNING_TTL_S
    assert abs(int(expiry_hex, 16) - expected_expiry) < EXPIRY_SLACK_SECONDS, (
        f"expiry {expiry_hex} in {locator!r} is not now + {SIGNING_TTL_S} s")
    assert sig == signature(block_hash, expiry_hex), (
        f"signature in {locator!r} does not match HMAC-SHA1(key, hash@token@{expiry_hex}@{SIGNING_TTL_S:x})")


class Checks:
    """Runs named checks in order; a check whose inputs failed is reported as failed."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.results = {}

    def run(self, name, function, *needs):
        missing = [need for need in needs if need not in self.results]
        if missing:
            self.failed += 1
            print(f"FAIL {name}: skipped, needs {', '.join(missing)}", flush=True)
            return
        started = time.monotonic()
        try:
            result, detail = function()
        except Exception as error:  # one check's failure must not hide the others
            self.failed += 1
            print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
            if not isinstance(error, AssertionError):
                traceback.print_exc(limit=4, file=sys.stdout)
            return
        self.passed += 1
        self.results[name] = result
        milliseconds = (time.monotonic() - started) * 1000
        print(f"ok   {name} ({milliseconds:.0f} ms){': ' + detail if detail else ''}", flush=True)


def main():
    sdk_version = importlib.metadata.version("arvados-python-client")
    print(f"sdk_roundtrip: arvados-python-client {sdk_version}, "
          f"{pycurl.version.split()[0]}, server {SERVICE_URL}", flush=True)
    checks = Checks()
    large_block = os.urandom(LARGE_BLOCK_BYTES)
    # The writer is built from ARVADOS_KEEP_SERVICES / ARVADOS_API_TOKEN, as a user would.
    writer = arvados.KeepClient(num_retries=0)
    # Reads go through a second client so its block cache cannot answer for the server.
    reader = arvados.KeepClient(num_retries=0)

    def client_uses_server():
        roots = [service["_service_root"] for service in writer._keep_services]
        wanted = SERVICE_URL if SERVICE_URL.endswith("/") else SERVICE_URL + "/"
        assert roots == [wanted], f"KeepClient services are {roots}, wanted [{wanted}]"
        assert writer.using_proxy, "KeepClient did not take ARVADOS_KEEP_SERVICES as its service list"
        return True, wanted

    def put_small():
        locator = writer.put(SMALL_BLOCK, copies=1, num_retries=0)
        check_signed_locator(locator, SMALL_BLOCK)
        return locator, locator

    def put_small_again():
        locator = writer.put(SMALL_BLOCK, copies=1, num_retries=0)
        check_signed_locator(locator, SMALL_BLOCK)
        return locator, "same block stored again"

    def put_large():
        started = time.monotonic()
        locator = writer.put(large_block, copies=1, num_retries=0)
        seconds = time.monotonic() - started
        check_signed_locator(locator, large_block)
        return (locator, seconds), f"{LARGE_BLOCK_BYTES} bytes in {seconds:.3f} s"

    def put_large_is_fast():
        seconds = checks.results["put_large"][1]
        if not PUT_TIMED:
            return True, f"not timed ({seconds:.3f} s): the block went to a remote store"
        assert seconds < LARGE_PUT_SECONDS_MAX, (
            f"10 MiB PUT took {seconds:.3f} s (>= {LARGE_PUT_SECONDS_MAX} s): "
            "is 'Expect: 100-continue' answered with '100 Continue'?")
        return True, f"{seconds:.3f} s < {LARGE_PUT_SECONDS_MAX} s, so '100 Continue' came"

    def put_with_storage_class():
        # With an API server the SDK asks for the cluster's default classes; the PUT then
        # only counts if X-Keep-Storage-Classes-Confirmed names the class.
        data = b"storage class default\n"
        locator = writer.put(data, copies=1, num_retries=0, classes=["default"])
        check_signed_locator(locator, data)
        assert not writer._storage_classes_unsupported_warning, (
            "the SDK found no X-Keep-Storage-Classes-Confirmed header and turned class tracking off")
        return locator, "X-Keep-Storage-Classes: default confirmed"

    def get_small():
        data = reader.get(checks.results["put_small"], num_retries=0)
        assert data == SMALL_BLOCK, f"GET returned {len(data)} bytes that differ from the {len(SMALL_BLOCK)} stored"
        return True, f"{len(data)} bytes match"

    def get_large():
        started = time.monotonic()
        data = reader.get(checks.results["put_large"][0], num_retries=0)
        seconds = time.monotonic() - started
        assert data == large_block, f"GET returned {len(data)} bytes that differ from the {LARGE_BLOCK_BYTES} stored"
        return True, f"{len(data)} bytes match, {seconds:.3f} s"

    def head_small():
        answer = reader.head(checks.results["put_small"], num_retries=0)
        assert answer is True, f"head() returned {answer!r}, wanted True"
        return True, "True"

    def get_missing_is_not_found():
        # A correctly signed locator for a block nobody stored: the signature check passes,
        # so the server must answer 404, which the SDK turns into NotFoundError.
        missing = os.urandom(64)
        missing_hash = hashlib.md5(missing).hexdigest()
        expiry_hex = SIGNED_LOCATOR_RE.match(checks.results["put_small"]).group(4)
        locator = f"{missing_hash}+{len(missing)}+A{signature(missing_hash, expiry_hex)}@{expiry_hex}"
        started = time.monotonic()
        try:
            reader.get(locator, num_retries=0)
        except arvados.errors.NotFoundError:
            pass
        else:
            raise AssertionError(f"get({locator}) returned data for a block never stored")
        seconds = time.monotonic() - started
        assert seconds < NOT_FOUND_SECONDS_MAX, f"NotFoundError took {seconds:.3f} s"
        return True, f"NotFoundError in {seconds:.3f} s"

    def get_with_other_token_is_refused():
        # The signature covers the token (section 2), so another user's client cannot read
        # with our locator. keepstore 3.x answers 400 "invalid signature", which the SDK
        # reports as KeepReadError (2.x answered 403, which it reports as NotFoundError).
        # Built from explicit arguments, the SDK's other way to name a Keep service.
        stranger = arvados.KeepClient(proxy=SERVICE_URL, api_token=API_TOKEN + "x", num_retries=0)
        try:
            stranger.get(checks.results["put_small"], num_retries=0)
        except arvados.errors.NotFoundError as error:
            raise AssertionError(f"wanted KeepReadError (HTTP 400), got NotFoundError: {error}")
        except arvados.errors.KeepReadError as error:
            statuses = [getattr(e, "status_code", None) for e in error.request_errors().values()]
            assert statuses == [400], f"wanted the server to answer 400, got {statuses}: {error}"
            return True, "KeepReadError (HTTP 400)"
        raise AssertionError("a client with another token read the block")

    def blocks_on_disk():
        # Directory volume layout shared with keepstore (section 6): <root>/<hash[:3]>/<hash>.
        found = []
        stored = ((checks.results["put_small"], SMALL_BLOCK), (checks.results["put_large"][0], large_block))
        for locator, data in stored:
            block_hash = locator[:32]
            paths = [os.path.join(volume, block_hash[:3], block_hash) for volume in VOLUMES]
            present = [path for path in paths if os.path.exists(path)]
            assert len(present) == 1, f"{block_hash} is on {len(present)} volumes, wanted 1: {present}"
            with open(present[0], "rb") as stored_file:
                assert stored_file.read() == data, f"{present[0]} does not hold the block's bytes"
            found.append(present[0])
        return True, ", ".join(found)

    checks.run("client_uses_server", client_uses_server)
    checks.run("put_small", put_small, "client_uses_server")
    checks.run("put_small_again", put_small_again, "put_small")
    checks.run("put_large", put_large, "client_uses_server")
    checks.run("put_large_is_fast", put_large_is_fast, "put_large")
    checks.run("put_with_storage_class", put_with_storage_class, "client_uses_server")
    checks.run("get_small", get_small, "put_small")
    checks.run("get_large", get_large, "put_large")
    checks.run("head_small", head_small, "put_small")
    checks.run("get_missing_is_not_found", get_missing_is_not_found, "put_small")
    checks.run("get_with_other_token_is_refused", get_with_other_token_is_refused, "put_small")
    if VOLUMES:
        checks.run("blocks_on_disk", blocks_on_disk, "put_small", "put_large")

    print(f"sdk_roundtrip: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
