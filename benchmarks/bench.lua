-- wrk script for bench_http.py: POST the benchmark body, authenticated, with an
-- Idempotency-Key. Arguments after "--": mode (first|replay), path, run id, body,
-- auth scheme (Bearer|Token), credentials (comma-separated, one per user; thread
-- n sends the (n mod count)-th, as bench_http.py primes replays).
--   first:  a new key on every request (run id, thread number, counter)
--   replay: one key per thread, primed by bench_http.py before the run
-- Keys are UUID-shaped because drf-idempotencykey accepts nothing else.

local threads = {}
local next_id = 0

function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
end

function init(args)
    mode, path, run_id, body, scheme = args[1], args[2], args[3], args[4], args[5]
    local credentials = {}
    for value in string.gmatch(args[6], "[^,]+") do table.insert(credentials, value) end
    local credential = credentials[(id % #credentials) + 1]
    counter = 0
    prefix = string.format("%s-%04x-4000-8000-", run_id, id)
    headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = scheme .. " " .. credential,
    }
end

function request()
    counter = counter + 1
    if mode == "replay" then
        headers["Idempotency-Key"] = prefix .. "000000000000"
    else
        headers["Idempotency-Key"] = string.format("%s%012x", prefix, counter)
    end
    return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
    io.write(string.format(
        'BENCH_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
        .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
        summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.status, summary.errors.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
