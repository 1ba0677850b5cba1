-- The create load of scripts/bench-write.sh and scripts/profile.sh (wrk): BOARDS (ids, any
-- separator) and TOKEN (a bearer token) from the environment.
-- POST /api/tasks on a random board of BOARDS; non-201 answers are counted by wrk.
local boards = {}
for b in string.gmatch(os.getenv("BOARDS"), "%d+") do boards[#boards + 1] = b end
local headers = {["Content-Type"] = "application/json",
                 ["Authorization"] = "Bearer " .. os.getenv("TOKEN")}
request = function()
  local b = boards[math.random(#boards)]
  return wrk.format("POST", "/api/tasks", headers, '{"board_id":' .. b .. ',"title":"bench"}')
end
