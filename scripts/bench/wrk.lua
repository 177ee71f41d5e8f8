-- wrk script for scripts/bench.sh.
--
-- GET (default): the URL's request, unchanged.
-- PUT: BENCH_PUT_LIST names a file of lines "<md5> <body file> <stored path>". Each
--   request sends the next block of the list (round robin) with method PUT to /<md5>,
--   after removing the server's stored copy, so every PUT really writes (a PUT of a block
--   that is already stored only re-verifies it and touches its mtime). bench.sh makes the
--   list longer than the connection count + 1, so a block is never removed while its
--   previous PUT is still in flight. Use with one wrk thread (-t1).
--   The first field may instead be a request path ("/bucket/key?query", e.g. a presigned
--   S3 URL's), sent as it is; a stored path "-" removes nothing (a store wrk cannot reach
--   by file: bench-s3-tls.sh lists more blocks than a run sends, and checks "repeats").
-- Either way done() prints one machine-readable line starting with "BENCH ", with
-- "repeats": how many PUTs sent a block of the list a second time with nothing removed
-- before (so the store may have only touched it).

local put_list = os.getenv("BENCH_PUT_LIST")
local blocks = {}
local next_block = 1
-- A global of each thread's state, read by done() through thread:get.
repeats = 0
local threads = {}

function setup(thread)
    threads[#threads + 1] = thread
end

function init(args)
    if not put_list then
        return
    end
    for line in io.lines(put_list) do
        local target, body_path, stored_path = line:match("^(%S+) (%S+) (%S+)$")
        if target then
            local path = target
            if not target:match("^/") then
                path = "/" .. target
            end
            if stored_path == "-" then
                stored_path = nil
            end
            local file = assert(io.open(body_path, "rb"))
            local body = file:read("*a")
            file:close()
            local headers = { ["Content-Type"] = "application/octet-stream" }
            blocks[#blocks + 1] = { stored = stored_path, sent = false, request = wrk.format("PUT", path, headers, body) }
        end
    end
    assert(#blocks > 0, "BENCH_PUT_LIST has no blocks")
end

if put_list then
    function request()
        local block = blocks[next_block]
        next_block = next_block % #blocks + 1
        if block.sent and not block.stored then
            repeats = repeats + 1
        end
        block.sent = true
        if block.stored then
            os.remove(block.stored)
        end
        return block.request
    end
end

function done(summary, latency, requests)
    local errors = summary.errors
    local repeated = 0
    for _, thread in ipairs(threads) do
        repeated = repeated + (thread:get("repeats") or 0)
    end
    local p50, p99, mean = 0, 0, 0
    if summary.requests > 0 then
        p50, p99, mean = latency:percentile(50), latency:percentile(99), latency.mean
    end
    io.write(string.format(
        "BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d "
            .. "p50_us=%d p99_us=%d mean_us=%d repeats=%d\n",
        summary.requests, summary.duration, summary.bytes, errors.connect, errors.read, errors.write,
        errors.status, errors.timeout, p50, p99, mean, repeated))
end
