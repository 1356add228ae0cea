-- wrk script: GET the URL's path (and query) followed by a line picked at random for each
-- request from a file (one suffix a line, URL-encoded), named as the script's argument:
--   wrk -s random_paths.lua http://host/items/ -- ids.txt          (lines "1", "2", ...)
--   wrk -s random_paths.lua "http://host/items?limit=10" -- cursors.txt  ("&cursor=...")
-- Each wrk thread has its own Lua state; seed each differently so they do not replay one
-- sequence.
local suffixes = {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function init(args)
  local name = args[1] or error("usage: wrk -s random_paths.lua URL -- FILE")
  for line in io.lines(name) do
    if #line > 0 then
      suffixes[#suffixes + 1] = line
    end
  end
  if #suffixes == 0 then
    error("no lines in " .. name)
  end
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
end

function request()
  return wrk.format("GET", wrk.path .. suffixes[math.random(#suffixes)])
end
