#!/usr/bin/env python3
"""Checks a test S3 store made by scripts/s3-store.sh with plain S3 clients.

    s3-selftest.py DIR all-up | node3-down | node3-back

Reads DIR/env (S3_ENDPOINT_1..3, S3_REGION, S3_BUCKET, S3_ACCESS_KEY_ID,
S3_SECRET_ACCESS_KEY). Two clients: boto3 (path-style addressing, SigV4 signed for
S3_REGION, no flexible checksums: what a plain SigV4 client sends) and raw HTTP requests
signed here with SigV4 and `x-amz-content-sha256: UNSIGNED-PAYLOAD` (how keepstore sends
blocks, and how a sans-IO signer streams a body it has not hashed).

all-up      every node runs: round trips through each node's endpoint (byte-exact, a
            64 MiB block included), ListObjectsV2 paging (max-keys, continuation token,
            start-after, prefix), HEAD, ranged GET, Content-MD5 checking, CopyObject (as
            keepstore's trash/untrash does), DELETE, 404s, multipart upload, conditional
            GET; notes (without failing) conditional PUT and a wrong signing region.
node3-down  node 3 is stopped: everything written before reads back through nodes 1 and
            2; PUT, COPY, LIST and DELETE work; new objects are kept for node3-back.
node3-back  node 3 runs again: it serves what was written while it was down.
Objects go under selftest/<run id>/ and are deleted at the end of node3-back (and of
each phase's own scratch objects). State between phases: DIR/selftest-state.json.
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.parse

import boto3
import botocore.config
import botocore.exceptions

MIB = 1024 * 1024


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


class Checks:
    def __init__(self, phase):
        self.phase = phase
        self.count = 0
        self.notes = []

    def ok(self, what, started):
        self.count += 1
        print(f"  ok   {what} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)

    def note(self, what):
        self.notes.append(what)
        print(f"  note {what}", flush=True)


def fail(msg):
    print(f"s3-selftest: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def client(env, endpoint):
    cfg = botocore.config.Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=env["S3_REGION"],
        aws_access_key_id=env["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["S3_SECRET_ACCESS_KEY"],
        config=cfg,
    )


def error_code(exc):
    return exc.response.get("Error", {}).get("Code"), exc.response.get(
        "ResponseMetadata", {}
    ).get("HTTPStatusCode")


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def put(s3, bucket, key, data):
    """PutObject with Content-MD5, as keepstore writes; checks the ETag is the MD5."""
    r = s3.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=md5_b64(data))
    etag = r["ETag"].strip('"')
    expect(etag == hashlib.md5(data).hexdigest(), f"PUT {key}: ETag {etag} is not the MD5")


def get_exact(s3, bucket, key, data, what):
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    expect(
        body == data,
        f"GET {key} via {what}: {len(body)} bytes, md5 {hashlib.md5(body).hexdigest()}, "
        f"expected {len(data)} bytes, md5 {hashlib.md5(data).hexdigest()}",
    )


def expect_404(s3, bucket, key, what):
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        code, status = error_code(e)
        expect(status == 404, f"HEAD {key} ({what}): {status} {code}, expected 404")
        return
    fail(f"HEAD {key} ({what}) succeeded, expected 404")


def list_all(s3, bucket, prefix, page, start_after=None):
    """ListObjectsV2 page by page; returns (keys, pages)."""
    keys, pages, token = [], 0, None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page}
        if token:
            kw["ContinuationToken"] = token
        elif start_after:
            kw["StartAfter"] = start_after
        r = s3.list_objects_v2(**kw)
        pages += 1
        got = [o["Key"] for o in r.get("Contents", [])]
        expect(len(got) <= page, f"list page of {len(got)} keys with MaxKeys={page}")
        keys += got
        if not r["IsTruncated"]:
            return keys, pages
        token = r["NextContinuationToken"]
        expect(pages < 1000, "list does not end")


# ---- raw SigV4 requests (no SDK) -------------------------------------------------------


def raw_request(env, endpoint, method, key, body=b"", headers=None, region=None):
    """One path-style request signed with SigV4 and UNSIGNED-PAYLOAD; (status, headers, body)."""
    u = urllib.parse.urlsplit(endpoint)
    path = "/" + env["S3_BUCKET"] + "/" + urllib.parse.quote(key, safe="/-_.~")
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    region = region or env["S3_REGION"]
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    hdrs.update(
        {
            "host": u.netloc,
            "x-amz-date": amz_date,
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        }
    )
    if body or method == "PUT":
        hdrs["content-length"] = str(len(body))
    signed = sorted(hdrs)
    canonical = "\n".join(
        [
            method,
            path,
            "",
            "".join(f"{k}:{hdrs[k].strip()}\n" for k in signed),
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = ("AWS4" + env["S3_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={env['S3_ACCESS_KEY_ID']}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={sig}"
    )
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def xml_code(body):
    text = body.decode(errors="replace")
    if "<Code>" in text:
        return text.split("<Code>", 1)[1].split("</Code>", 1)[0]
    return text[:80]


# ---- phases ------------------------------------------------------------------------------


def phase_all_up(env, state, c):
    bucket = env["S3_BUCKET"]
    eps = [env[f"S3_ENDPOINT_{i}"] for i in (1, 2, 3)]
    s3s = [client(env, ep) for ep in eps]
    s3 = s3s[0]
    run = state["run"]
    rnd = os.urandom

    t = time.monotonic()
    s3.head_bucket(Bucket=bucket)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    expect(bucket in names, f"bucket {bucket} not in ListBuckets: {names}")
    c.ok(f"HeadBucket, ListBuckets (region {env['S3_REGION']}, path-style)", t)

    # Objects in keepstore's shapes: a block, an empty recent/ marker, a 64 MiB block.
    objs = {
        f"{run}/block-3m": rnd(3 * MIB + 17),
        f"{run}/recent/block-3m": b"",
        f"{run}/block-1": rnd(1),
    }
    for key, data in objs.items():
        t = time.monotonic()
        put(s3, bucket, key, data)
        c.ok(f"PUT {key} ({len(data)} bytes, Content-MD5; ETag is the MD5)", t)
    big_key, big = f"{run}/block-64m", rnd(64 * MIB)
    t = time.monotonic()
    put(s3, bucket, big_key, big)
    c.ok(f"PUT {big_key} (64 MiB)", t)
    t = time.monotonic()
    get_exact(s3s[2], bucket, big_key, big, "node 3")
    c.ok("GET 64 MiB via node 3, byte-exact", t)
    objs[big_key] = big
    for i, s in enumerate(s3s, 1):
        t = time.monotonic()
        for key, data in objs.items():
            if key != big_key:
                get_exact(s, bucket, key, data, f"node {i}")
        c.ok(f"GET every object via node {i}, byte-exact", t)

    t = time.monotonic()
    h = s3.head_object(Bucket=bucket, Key=f"{run}/block-3m")
    expect(h["ContentLength"] == 3 * MIB + 17, f"HEAD length {h['ContentLength']}")
    lm = h["LastModified"]
    age = (datetime.datetime.now(datetime.timezone.utc) - lm).total_seconds()
    expect(-5 < age < 120, f"HEAD LastModified {lm} is {age:.0f} s from now")
    c.ok(f"HEAD: length, ETag, Last-Modified ({lm.isoformat()})", t)

    t = time.monotonic()
    data = objs[f"{run}/block-3m"]
    r = s3.get_object(Bucket=bucket, Key=f"{run}/block-3m", Range="bytes=1048570-2097160")
    expect(r["Body"].read() == data[1048570:2097161], "ranged GET bytes differ")
    expect(r["ResponseMetadata"]["HTTPStatusCode"] == 206, "ranged GET is not 206")
    c.ok("ranged GET across a Garage block boundary (206, exact)", t)

    # Listing as keepstore's index does: ListObjectsV2, prefix, MaxKeys, continuation.
    t = time.monotonic()
    lst = f"{run}/list/"
    names = [f"{lst}{i:02x}{'0' * 30}" for i in range(0, 250, 25)]
    for key in names:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{run}/listx", Body=b"")
    c.ok(f"PUT {len(names) + 1} empty objects", t)
    t = time.monotonic()
    keys, pages = list_all(s3, bucket, lst, 3)
    expect(keys == names, f"paged list: {keys} != {names}")
    expect(pages == 4, f"10 keys in pages of 3 took {pages} pages")
    keys, _ = list_all(s3, bucket, lst, 1000)
    expect(keys == names, "list in one page differs")
    keys, _ = list_all(s3, bucket, lst, 4, start_after=names[4])
    expect(keys == names[5:], f"StartAfter: {keys} != {names[5:]}")
    keys, _ = list_all(s3, bucket, lst, 4, start_after=lst + "3")
    expect(keys == [k for k in names if k > lst + "3"], "StartAfter between keys")
    r = s3.list_objects_v2(Bucket=bucket, Prefix=f"{run}/", Delimiter="/")
    prefixes = sorted(p["Prefix"] for p in r.get("CommonPrefixes", []))
    expect(prefixes == [f"{run}/list/", f"{run}/recent/"], f"CommonPrefixes {prefixes}")
    objs_listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{run}/block-3m")["Contents"]
    o = objs_listed[0]
    expect(o["Size"] == 3 * MIB + 17 and o["ETag"].strip('"') == hashlib.md5(data).hexdigest(),
           f"listed entry {o}")
    c.ok(
        "ListObjectsV2: MaxKeys=3 paging by continuation token, StartAfter, prefix, "
        f"delimiter; entries carry Size, ETag, LastModified ({o['LastModified'].isoformat()})",
        t,
    )
    t = time.monotonic()
    r = s3.list_objects(Bucket=bucket, Prefix=lst, MaxKeys=4, Marker=names[1])
    expect([x["Key"] for x in r["Contents"]] == names[2:6] and r["IsTruncated"], "ListObjects v1")
    c.ok("ListObjects (v1) with Marker", t)

    # Content-MD5 is checked: a wrong one is refused and leaves no object behind.
    t = time.monotonic()
    bad_key = f"{run}/bad-md5"
    try:
        s3.put_object(Bucket=bucket, Key=bad_key, Body=b"some bytes", ContentMD5=md5_b64(b"other"))
        fail("PUT with a wrong Content-MD5 succeeded")
    except botocore.exceptions.ClientError as e:
        code, status = error_code(e)
        expect(status == 400 and code == "BadDigest", f"wrong Content-MD5: {status} {code}")
    expect_404(s3, bucket, bad_key, "after a refused PUT")
    c.ok("PUT with a wrong Content-MD5: 400 BadDigest, nothing stored", t)

    # Raw SigV4 with UNSIGNED-PAYLOAD (no body hash): accepted, and Content-MD5 still checked.
    t = time.monotonic()
    raw_key, raw = f"{run}/raw", rnd(MIB + 5)
    st, hd, body = raw_request(env, eps[1], "PUT", raw_key, raw, {"Content-MD5": md5_b64(raw)})
    expect(st == 200, f"raw PUT: {st} {body[:200]!r}")
    expect(hd.get("etag", "").strip('"') == hashlib.md5(raw).hexdigest(), f"raw PUT ETag {hd}")
    st, hd, body = raw_request(env, eps[2], "GET", raw_key)
    expect(st == 200 and body == raw, f"raw GET: {st}, {len(body)} bytes")
    st, hd, body = raw_request(env, eps[0], "PUT", raw_key + "-bad", raw, {"Content-MD5": md5_b64(b"x")})
    expect(st == 400 and xml_code(body) == "BadDigest", f"raw PUT bad MD5: {st} {xml_code(body)}")
    st, hd, body = raw_request(env, eps[0], "HEAD", raw_key + "-bad")
    expect(st == 404, f"raw HEAD after refused PUT: {st}")
    c.ok("raw SigV4, UNSIGNED-PAYLOAD: PUT (Content-MD5) via node 2, GET via node 3, bad MD5 refused", t)

    t = time.monotonic()
    st, hd, body = raw_request(env, eps[0], "GET", raw_key, region="us-east-1")
    c.note(f"a request signed for region us-east-1 instead of {env['S3_REGION']}: {st} {xml_code(body)}")
    expect(st in (400, 403), "wrong region accepted")

    # CopyObject as keepstore's trash/untrash (safeCopy checks the new LastModified).
    t = time.monotonic()
    src = f"{run}/block-3m"
    time.sleep(1.1)  # a copy must get a newer timestamp than its source
    r = s3.copy_object(Bucket=bucket, Key=f"{run}/trash/block-3m", CopySource=f"{bucket}/{src}",
                       ContentType="application/octet-stream")
    cr = r["CopyObjectResult"]
    expect(cr["LastModified"] > lm, f"copy LastModified {cr['LastModified']} not after {lm}")
    expect(cr["ETag"].strip('"') == hashlib.md5(data).hexdigest(), "copy ETag")
    s3.delete_object(Bucket=bucket, Key=src)
    expect_404(s3s[1], bucket, src, "after DELETE, via node 2")
    s3.copy_object(Bucket=bucket, Key=src, CopySource=f"{bucket}/{run}/trash/block-3m")
    get_exact(s3s[2], bucket, src, data, "node 3 after untrash")
    s3.delete_object(Bucket=bucket, Key=f"{run}/trash/block-3m")
    c.ok("CopyObject (new LastModified, same ETag), DELETE, copy back (trash/untrash)", t)

    t = time.monotonic()
    try:
        s3.get_object(Bucket=bucket, Key=f"{run}/missing")
        fail("GET of a missing key succeeded")
    except botocore.exceptions.ClientError as e:
        code, status = error_code(e)
        expect(status == 404 and code == "NoSuchKey", f"GET missing: {status} {code}")
    expect_404(s3, bucket, f"{run}/missing", "missing key")
    r = s3.delete_object(Bucket=bucket, Key=f"{run}/missing")
    expect(r["ResponseMetadata"]["HTTPStatusCode"] == 204, "DELETE of a missing key")
    c.ok("missing key: GET 404 NoSuchKey, HEAD 404, DELETE 204", t)

    # Multipart, as keepstore's uploader sends blocks over 5 MiB (5 MiB parts): the ETag
    # is then not the content's MD5.
    t = time.monotonic()
    mp_key, mp = f"{run}/multipart", rnd(5 * MIB + 3)
    up = s3.create_multipart_upload(Bucket=bucket, Key=mp_key)
    parts = []
    for n, chunk in ((1, mp[: 5 * MIB]), (2, mp[5 * MIB :])):
        r = s3.upload_part(Bucket=bucket, Key=mp_key, UploadId=up["UploadId"], PartNumber=n,
                           Body=chunk, ContentMD5=md5_b64(chunk))
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    r = s3.complete_multipart_upload(Bucket=bucket, Key=mp_key, UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": parts})
    get_exact(s3s[1], bucket, mp_key, mp, "node 2")
    mp_etag = r["ETag"].strip('"')
    expect(mp_etag.endswith("-2"), f"multipart ETag {mp_etag}")
    c.ok(f"multipart upload (5 MiB + 3 B parts): exact; ETag {mp_etag} (not the MD5)", t)

    # Conditional GET.
    t = time.monotonic()
    etag = '"' + hashlib.md5(data).hexdigest() + '"'
    st, _, _ = raw_request(env, eps[0], "GET", src, headers={"If-None-Match": etag})
    expect(st == 304, f"If-None-Match with the ETag: {st}")
    st, _, _ = raw_request(env, eps[0], "GET", src, headers={"If-Match": '"0123"'})
    expect(st == 412, f"If-Match with another ETag: {st}")
    st, _, body = raw_request(env, eps[0], "GET", src, headers={"If-Match": etag})
    expect(st == 200 and body == data, f"If-Match with the ETag: {st}")
    c.ok("conditional GET: If-None-Match → 304, If-Match wrong → 412, right → 200", t)

    # Conditional PUT (If-None-Match: *) is noted, not required.
    t = time.monotonic()
    st, _, body = raw_request(env, eps[0], "PUT", src, b"overwrite?", {"If-None-Match": "*"})
    if st == 200:
        c.note("PUT with If-None-Match: * over an existing object: 200 (conditional writes are "
               "not supported; the object was overwritten)")
        s3.put_object(Bucket=bucket, Key=src, Body=data, ContentMD5=md5_b64(data))
    else:
        c.note(f"PUT with If-None-Match: * over an existing object: {st} {xml_code(body)}")
        get_exact(s3, bucket, src, data, "node 1 after the refused conditional PUT")

    # Scratch objects of this phase go; the blocks stay for the next phases.
    t = time.monotonic()
    for key in names + [f"{run}/listx", raw_key, mp_key, big_key]:
        s3.delete_object(Bucket=bucket, Key=key)
    keys, _ = list_all(s3, bucket, lst, 1000)
    expect(keys == [], f"list after deleting: {keys}")
    c.ok("DELETE scratch objects; list is empty after", t)
    del objs[big_key]
    state["written"] = {k: base64.b64encode(v).decode() for k, v in objs.items()}


def phase_node3_down(env, state, c):
    bucket = env["S3_BUCKET"]
    run = state["run"]
    s3s = [client(env, env[f"S3_ENDPOINT_{i}"]) for i in (1, 2)]
    before = {k: base64.b64decode(v) for k, v in state["written"].items()}
    for i, s in enumerate(s3s, 1):
        t = time.monotonic()
        for key, data in before.items():
            get_exact(s, bucket, key, data, f"node {i}")
        c.ok(f"GET every object written before, via node {i}, byte-exact", t)
    new = {}
    for i, s in enumerate(s3s, 1):
        t = time.monotonic()
        key, data = f"{run}/down-{i}", os.urandom(2 * MIB + i)
        put(s, bucket, key, data)
        put(s, bucket, f"{run}/recent/down-{i}", b"")
        new[key], new[f"{run}/recent/down-{i}"] = data, b""
        c.ok(f"PUT {key} and its recent/ marker via node {i}", t)
    t = time.monotonic()
    get_exact(s3s[1], bucket, f"{run}/down-1", new[f"{run}/down-1"], "node 2")
    get_exact(s3s[0], bucket, f"{run}/down-2", new[f"{run}/down-2"], "node 1")
    c.ok("GET each new object via the other node", t)
    t = time.monotonic()
    keys, pages = list_all(s3s[0], bucket, f"{run}/", 2)
    expect(set(before) | set(new) == set(keys), f"list while node 3 is down: {keys}")
    c.ok(f"ListObjectsV2 while node 3 is down ({len(keys)} keys, {pages} pages of 2)", t)
    t = time.monotonic()
    s3s[1].copy_object(Bucket=bucket, Key=f"{run}/trash/down-1", CopySource=f"{bucket}/{run}/down-1")
    s3s[0].delete_object(Bucket=bucket, Key=f"{run}/trash/down-1")
    expect_404(s3s[1], bucket, f"{run}/trash/down-1", "after DELETE while node 3 is down")
    c.ok("CopyObject and DELETE while node 3 is down", t)
    state["written"].update({k: base64.b64encode(v).decode() for k, v in new.items()})
    state["written_down"] = sorted(new)


def phase_node3_back(env, state, c):
    bucket = env["S3_BUCKET"]
    run = state["run"]
    s3 = client(env, env["S3_ENDPOINT_3"])
    written = {k: base64.b64decode(v) for k, v in state["written"].items()}
    t = time.monotonic()
    for key in state["written_down"]:
        get_exact(s3, bucket, key, written[key], "node 3")
    c.ok("GET via node 3 what was written while it was down, byte-exact", t)
    t = time.monotonic()
    keys, _ = list_all(s3, bucket, f"{run}/", 1000)
    expect(set(keys) == set(written), f"list via node 3: {keys}")
    c.ok(f"ListObjectsV2 via node 3 ({len(keys)} keys)", t)
    t = time.monotonic()
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    keys, _ = list_all(client(env, env["S3_ENDPOINT_1"]), bucket, f"{run}/", 1000)
    expect(keys == [], f"left after cleanup: {keys}")
    c.ok("DELETE every object of this run via node 3; node 1 lists none", t)


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ("all-up", "node3-down", "node3-back"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    d, phase = sys.argv[1], sys.argv[2]
    env = load_env(os.path.join(d, "env"))
    state_file = os.path.join(d, "selftest-state.json")
    if phase == "all-up":
        state = {"run": f"selftest/{int(time.time())}-{os.urandom(3).hex()}"}
    else:
        with open(state_file) as f:
            state = json.load(f)
    c = Checks(phase)
    print(f"s3-selftest {phase}: {state['run']} on {env['S3_ENDPOINT_1']} "
          f"{env['S3_ENDPOINT_2']} {env['S3_ENDPOINT_3']}", flush=True)
    started = time.monotonic()
    try:
        {"all-up": phase_all_up, "node3-down": phase_node3_down, "node3-back": phase_node3_back}[
            phase
        ](env, state, c)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
        fail(f"{phase}: {type(e).__name__}: {e}")
    if phase == "node3-back":
        os.unlink(state_file)
    else:
        with open(state_file + ".new", "w") as f:
            json.dump(state, f)
        os.replace(state_file + ".new", state_file)
    print(f"s3-selftest {phase}: {c.count} checks passed in {time.monotonic() - started:.1f} s",
          flush=True)


if __name__ == "__main__":
    main()
