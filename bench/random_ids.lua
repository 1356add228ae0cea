-- wrk script: GET /items/{id} with a random id in 1..10000 (override with MAX_ID in the env).
-- Each wrk thread has its own Lua state; seed each differently so they do not replay one
-- sequence.
local max_id = tonumber(os.getenv("MAX_ID") or "10000")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
end

function request()
  return wrk.format("GET", "/items/" .. math.random(1, max_id))
end
