-- wrk script for `scripts/http_bench`: POST /v1/transfers (batch = 1) or
-- /v1/transfers/batch (batch > 1) between random funded accounts, each
-- transfer with a fresh random id. The setup file (token, batch, accounts)
-- is written by `http_loadgen --serve-for-s`.
assert(loadfile(os.getenv("WALLET_WRK_SETUP")))()

local random = math.random
local format = string.format
local concat = table.concat
local count = #accounts

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  math.randomseed(os.time() * 7919 + (thread_number or 0) * 104729)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.path = batch > 1 and "/v1/transfers/batch" or "/v1/transfers"
end

local function uuid()
  return format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
    random(0, 65535), random(0, 65535), random(0, 65535), random(0, 4095),
    random(32768, 49151), random(0, 65535), random(0, 65535), random(0, 65535))
end

local function transfer()
  local from = random(1, count)
  local to = random(1, count - 1)
  if to >= from then to = to + 1 end
  return format('{"id":"%s","from_account_id":"%s","to_account_id":"%s","amount":"1"}',
    uuid(), accounts[from], accounts[to])
end

function request()
  local body
  if batch > 1 then
    local items = {}
    for i = 1, batch do items[i] = transfer() end
    body = '{"transfers":[' .. concat(items, ",") .. '],"atomic":false}'
  else
    body = transfer()
  end
  return wrk.format(nil, nil, nil, body)
end
