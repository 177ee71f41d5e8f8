-- wrk script for scripts/bench.sh.
--
-- GET (default): the URL's request, unchanged.
-- PUT: BENCH_PUT_LIST names a file of lines "<md5> <body file> <stored path>". Each
--   request sends the next block of the list (round robin) with method PUT to /<md5>,
--   after removing the server's stored copy, so every PUT really writes (a PUT of a block
--   that is already stored only re-verifies it and touches its mtime). bench.sh makes the
--   list longer than the connection count + 1, so a block is never removed while its
--   previous PUT is still in flight. Use with one wrk thread (-t1).
-- Either way done() prints one machine-readable line starting with "BENCH ".

local put_list = os.getenv("BENCH_PUT_LIST")
local blocks = {}
local next_block = 1

function init(args)
    if not put_list then
        return
    end
    for line in io.lines(put_list) do
        local hash, body_path, stored_path = line:match("^(%x+) (%S+) (%S+)$")
        if hash then
            local file = assert(io.open(body_path, "rb"))
            local body = file:read("*a")
            file:close()
            local headers = { ["Content-Type"] = "application/octet-stream" }
            blocks[#blocks + 1] = { stored = stored_path, request = wrk.format("PUT", "/" .. hash, headers, body) }
        end
    end
    assert(#blocks > 0, "BENCH_PUT_LIST has no blocks")
end

if put_list then
    function request()
        local block = blocks[next_block]
        next_block = next_block % #blocks + 1
        os.remove(block.stored)
        return block.request
    end
end

function done(summary, latency, requests)
    local errors = summary.errors
    local p50, p99, mean = 0, 0, 0
    if summary.requests > 0 then
        p50, p99, mean = latency:percentile(50), latency:percentile(99), latency.mean
    end
    io.write(string.format(
        "BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d "
            .. "p50_us=%d p99_us=%d mean_us=%d\n",
        summary.requests, summary.duration, summary.bytes, errors.connect, errors.read, errors.write,
        errors.status, errors.timeout, p50, p99, mean))
end
