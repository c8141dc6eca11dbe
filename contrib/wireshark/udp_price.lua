-- Wireshark / tshark dissector for udp-price (docs/protocol.md): every message kind of
-- protocol versions 1 and 2, the kind byte's flags, money as decimal, CRC32 verified,
-- request/reply matching with response times and retransmission marks, the authentication
-- trailer of signed messages (key id, timestamp, clock skew; the tag is shown, not verified).
--
--   tshark -X lua_script:contrib/wireshark/udp_price.lua -r capture.pcapng
--   (or copy this file to ~/.local/lib/wireshark/plugins/)
--
-- Field names (for filters such as `udp_price.status != 0`) are listed in docs/testing.md.
-- Lua 5.2 as Debian's Wireshark 4.0 embeds it: bitwise operations through bit32.

local p = Proto("udp_price", "udp-price quote protocol")

local DEFAULT_PORT = 9999
local MAGIC = "QP"
local CRC_SIZE = 4
-- The authentication trailer (docs/protocol.md, AUTH_TRAILER_DEF in wire_format.py): key id u32,
-- timestamp u64 (Unix ms), 16-byte tag (HMAC-SHA256 truncated to 128 bits), before the CRC32.
local AUTH_TRAILER_SIZE = 28
local AUTH_TAG_SIZE = 16
local TAG_NOT_VERIFIED = "not verified: that needs the key's secret, which a capture does not carry"
local ITEM_SIZE = 32

local KINDS = {
    [1] = "Quote request", [2] = "Quote reply", [3] = "Batch request",
    [4] = "Batch reply", [5] = "List request", [6] = "List reply",
}
local STATUS = {
    [0] = "OK", [1] = "UNKNOWN_ITEM", [2] = "BAD_QUANTITY", [3] = "OVERFLOW",
    [4] = "UNSUPPORTED_VERSION", [5] = "MALFORMED", [6] = "BUSY", [7] = "BAD_PAGE",
}
local CRC_STATUS = { [0] = "Bad", [1] = "Good" }

local f = {
    magic = ProtoField.string("udp_price.magic", "Magic"),
    version = ProtoField.uint8("udp_price.version", "Version"),
    kind_byte = ProtoField.uint8("udp_price.kind_byte", "Kind byte", base.HEX),
    flag_auth = ProtoField.bool("udp_price.flags.auth", "AUTH (authentication trailer)", 8, nil, 0x80),
    flag_overloaded = ProtoField.bool("udp_price.flags.overloaded", "OVERLOADED (server overloaded)", 8, nil, 0x40),
    kind = ProtoField.uint8("udp_price.kind", "Kind", base.DEC, KINDS, 0x3F),
    request_id = ProtoField.uint64("udp_price.request_id", "Request id", base.HEX),
    transmission = ProtoField.uint8("udp_price.transmission", "Transmission"),
    quantity = ProtoField.uint32("udp_price.quantity", "Quantity"),
    item = ProtoField.string("udp_price.item", "Item"),
    status = ProtoField.uint8("udp_price.status", "Status", base.DEC, STATUS),
    retry_after_ms = ProtoField.uint16("udp_price.retry_after_ms", "Retry after (ms)"),
    unit_price = ProtoField.string("udp_price.unit_price", "Unit price"),
    unit_price_cents = ProtoField.uint64("udp_price.unit_price_cents", "Unit price (minor units)"),
    total = ProtoField.string("udp_price.total", "Total"),
    total_cents = ProtoField.uint64("udp_price.total_cents", "Total (minor units)"),
    catalog_version = ProtoField.uint32("udp_price.catalog_version", "Catalog version", base.HEX),
    count = ProtoField.uint8("udp_price.count", "Count"),
    lines_digest = ProtoField.uint32("udp_price.lines_digest", "Lines digest", base.HEX),
    page = ProtoField.uint32("udp_price.page", "Page"),
    pages = ProtoField.uint32("udp_price.pages", "Pages"),
    prefix = ProtoField.string("udp_price.prefix", "Prefix"),
    flags_v1 = ProtoField.uint8("udp_price.flags_v1", "Flags (version 1)", base.HEX),
    reserved = ProtoField.bytes("udp_price.reserved", "Reserved"),
    auth_trailer = ProtoField.bytes("udp_price.auth_trailer", "Auth trailer (raw: its length does not fit)"),
    auth = ProtoField.none("udp_price.auth", "Authentication trailer"),
    auth_key_id = ProtoField.uint32("udp_price.auth.key_id", "Key id"),
    auth_timestamp = ProtoField.absolute_time("udp_price.auth.timestamp", "Timestamp", base.UTC),
    auth_timestamp_ms = ProtoField.uint64("udp_price.auth.timestamp_ms", "Timestamp (Unix ms)"),
    auth_tag = ProtoField.bytes("udp_price.auth.tag", "Tag (HMAC-SHA256, first 128 bits)"),
    auth_tag_check = ProtoField.string("udp_price.auth.tag.check", "Tag check"),
    auth_skew = ProtoField.double("udp_price.auth.skew", "Clock skew (s): timestamp minus capture time"),
    body = ProtoField.bytes("udp_price.body", "Body (unknown layout)"),
    line = ProtoField.uint8("udp_price.line", "Line"),
    line_quantity = ProtoField.uint32("udp_price.line.quantity", "Quantity"),
    line_item = ProtoField.string("udp_price.line.item", "Item"),
    line_status = ProtoField.uint8("udp_price.line.status", "Status", base.DEC, STATUS),
    line_unit_price = ProtoField.string("udp_price.line.unit_price", "Unit price"),
    line_unit_price_cents = ProtoField.uint64("udp_price.line.unit_price_cents", "Unit price (minor units)"),
    line_total = ProtoField.string("udp_price.line.total", "Total"),
    line_total_cents = ProtoField.uint64("udp_price.line.total_cents", "Total (minor units)"),
    entry = ProtoField.uint8("udp_price.entry", "Entry"),
    entry_item = ProtoField.string("udp_price.entry.item", "Item"),
    entry_unit_price = ProtoField.string("udp_price.entry.unit_price", "Unit price"),
    entry_unit_price_cents = ProtoField.uint64("udp_price.entry.unit_price_cents", "Unit price (minor units)"),
    crc32 = ProtoField.uint32("udp_price.crc32", "CRC32", base.HEX),
    crc32_status = ProtoField.uint8("udp_price.crc32.status", "CRC32 status", base.DEC, CRC_STATUS),
    crc32_calculated = ProtoField.uint32("udp_price.crc32.calculated", "CRC32 calculated", base.HEX),
    response_in = ProtoField.framenum("udp_price.response_in", "Response in"),
    request_in = ProtoField.framenum("udp_price.request_in", "Request in"),
    first_request_in = ProtoField.framenum("udp_price.first_request_in", "First transmission in"),
    time = ProtoField.relative_time("udp_price.time", "Time since the transmission answered"),
    time_since_first = ProtoField.relative_time("udp_price.time_since_first", "Time since the first transmission"),
    attempt = ProtoField.uint32("udp_price.attempt", "Attempt (datagrams of this request so far)"),
    retransmission = ProtoField.bool("udp_price.retransmission", "Retransmission"),
    duplicate = ProtoField.bool("udp_price.duplicate", "Duplicate (a transmission or reply seen before)"),
}
local fields = {}
for _, v in pairs(f) do fields[#fields + 1] = v end
p.fields = fields

local e = {
    bad_crc = ProtoExpert.new("udp_price.crc32.bad", "Bad CRC32", expert.group.CHECKSUM, expert.severity.ERROR),
    good_crc = ProtoExpert.new("udp_price.crc32.good", "Good CRC32", expert.group.CHECKSUM, expert.severity.CHAT),
    bad_length = ProtoExpert.new("udp_price.bad_length", "Length does not fit the kind",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_magic = ProtoExpert.new("udp_price.bad_magic", "Not the udp-price magic QP",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown = ProtoExpert.new("udp_price.unknown", "Unknown version, kind or flag: not answered",
        expert.group.PROTOCOL, expert.severity.WARN),
    retransmission = ProtoExpert.new("udp_price.retransmission.expert", "Retransmission",
        expert.group.SEQUENCE, expert.severity.NOTE),
    duplicate = ProtoExpert.new("udp_price.duplicate.expert", "Duplicate datagram",
        expert.group.SEQUENCE, expert.severity.NOTE),
    failure = ProtoExpert.new("udp_price.failure", "The server did not price this",
        expert.group.RESPONSE_CODE, expert.severity.NOTE),
    auth_bad_length = ProtoExpert.new("udp_price.auth.bad_length",
        "AUTH flag set but the trailer is not 28 bytes (key id, timestamp, tag)",
        expert.group.MALFORMED, expert.severity.ERROR),
}
p.experts = {
    e.bad_crc, e.good_crc, e.bad_length, e.bad_magic, e.unknown, e.retransmission, e.duplicate, e.failure,
    e.auth_bad_length,
}

-- CRC32 (zlib / IEEE 802.3, reflected polynomial 0xEDB88320), as the protocol's seal.
local CRC_TABLE = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if bit32.band(c, 1) == 1 then c = bit32.bxor(0xEDB88320, bit32.rshift(c, 1)) else c = bit32.rshift(c, 1) end
    end
    CRC_TABLE[i] = c
end

local function crc32(bytes)
    local c = 0xFFFFFFFF
    for i = 0, bytes:len() - 1 do
        c = bit32.bxor(CRC_TABLE[bit32.band(bit32.bxor(c, bytes:get_index(i)), 0xFF)], bit32.rshift(c, 8))
    end
    return bit32.bxor(c, 0xFFFFFFFF)
end

-- Money: u64 minor units shown as decimal with two places, exactly (UInt64 arithmetic, no floats).
local function money(range)
    local cents = range:uint64()
    local units = cents / UInt64(100)
    local rest = (cents % UInt64(100)):tonumber()
    return string.format("%s.%02d", tostring(units), rest)
end

-- Valid UTF-8 kept, every other byte shown escaped as \xNN: an item cut mid-character (or
-- corrupted) must not make tshark's own output (JSON, fields) invalid UTF-8.
local function utf8_sequence_length(s, i)
    local b = s:byte(i)
    local n, lo, hi = 0, 0x80, 0xBF
    if b < 0x80 then return 1
    elseif b >= 0xC2 and b <= 0xDF then n = 2
    elseif b >= 0xE0 and b <= 0xEF then
        n = 3
        if b == 0xE0 then lo = 0xA0 elseif b == 0xED then hi = 0x9F end  -- no overlongs, no surrogates
    elseif b >= 0xF0 and b <= 0xF4 then
        n = 4
        if b == 0xF0 then lo = 0x90 elseif b == 0xF4 then hi = 0x8F end  -- no overlongs, nothing past U+10FFFF
    else return 0 end
    if i + n - 1 > #s then return 0 end
    local second = s:byte(i + 1)
    if second < lo or second > hi then return 0 end
    for j = i + 2, i + n - 1 do
        local c = s:byte(j)
        if c < 0x80 or c > 0xBF then return 0 end
    end
    return n
end

local function printable_utf8(s)
    local out, i = {}, 1
    while i <= #s do
        local n = utf8_sequence_length(s, i)
        if n == 0 then
            out[#out + 1] = string.format("\\x%02x", s:byte(i))
            i = i + 1
        else
            out[#out + 1] = s:sub(i, i + n - 1)
            i = i + n
        end
    end
    return table.concat(out)
end

-- NUL-padded UTF-8: the name ends at the first NUL, or fills the field (stringz would read on
-- past the field's end into the next one).
local function item_text(range)
    local raw = range:raw()
    local nul = raw:find("\0", 1, true)
    return printable_utf8(nul and raw:sub(1, nul - 1) or raw)
end

-- Whether a datagram of len bytes has a valid size for (version, kind).
local function size_fits(version, kind, len)
    if kind == 1 or kind == 2 then return len == 76 end
    if kind == 3 then return len >= 56 and (len - 20) % 36 == 0 and (len - 20) / 36 <= 32 end
    if kind == 4 then
        local fixed = (version == 1) and 28 or 29
        return len >= fixed and (len - fixed) % 17 == 0 and (len - fixed) / 17 <= 32
    end
    -- Lists: version 1 had a u16 page (and pages): a 666-byte request, replies of 26 + 40 N bytes.
    if kind == 5 then return len == ((version == 1) and 666 or 670) end
    if kind == 6 then
        local fixed = (version == 1) and 26 or 30
        return len >= fixed and (len - fixed) % 40 == 0 and (len - fixed) / 40 <= 16
    end
    return false
end

-- The size a message of this kind would have without an authentication trailer: fixed, or
-- given by its count byte (offset 12 in batch requests, 13 in batch and list replies).
local function size_from_count(version, kind, buf)
    if kind == 1 or kind == 2 then return 76 end
    if kind == 5 then return (version == 1) and 666 or 670 end
    if kind == 3 then return 20 + 36 * buf(12, 1):uint() end
    if kind == 4 then return ((version == 1) and 28 or 29) + 17 * buf(13, 1):uint() end
    return ((version == 1) and 26 or 30) + 40 * buf(13, 1):uint()
end

------------------------------------------------------------------------------------------------
-- Request/reply matching. Keyed by conversation (the two address/port pairs, so the client's leg
-- and the server's leg of a proxy capture are separate stories, as DNS keys by id and ports) and
-- request id. Computed on the first pass (pinfo.visited false) and read back when displayed.

-- Seconds since the first frame, a float: near zero it resolves nanoseconds, where the epoch
-- time (pinfo.abs_ts, ~1.8e9) resolves only about half a microsecond. frame.time_epoch would be an
-- exact NSTime but is not built on tshark's first pass without a tree.
local function frame_time(pinfo) return pinfo.rel_ts end

local function duration(seconds)
    local s = math.floor(seconds)
    local ns = math.floor((seconds - s) * 1e9 + 0.5)
    if ns >= 1000000000 then s, ns = s + 1, ns - 1000000000 end
    return NSTime.new(s, ns)
end

-- key -> { requests = count, replies = count, by_tx = {tx -> record}, by_bytes = {datagram -> record},
--         last = record, first = frame, first_time }
-- where a record is { number = frame, time = seconds, response_in = frame of the first reply to it }
local exchanges = {}
local frame_info = {}  -- frame number -> table of generated values

function p.init()
    exchanges = {}
    frame_info = {}
end

-- The request's kind is part of the key (a reply's kind is its request's plus one): a quote and a
-- listing that happen to share an id are two exchanges.
local function exchange_key(pinfo, request_id, kind)
    local is_request = kind % 2 == 1
    local a = tostring(pinfo.src) .. ":" .. pinfo.src_port
    local b = tostring(pinfo.dst) .. ":" .. pinfo.dst_port
    if not is_request then a, b = b, a end
    local request_kind = is_request and kind or (kind - 1)
    return a .. ">" .. b .. "#" .. tostring(request_id) .. "/" .. request_kind
end

-- A request without a transmission number (lists, version 1, transmission 0) whose bytes are
-- those of one already seen is a copy: the identical datagram again. (A client resending the
-- identical bytes looks the same on the wire; without a transmission number nothing tells them apart.)
local function track_request(pinfo, key, tx, datagram)
    local x = exchanges[key]
    local now = frame_time(pinfo)
    if not x then
        x = { requests = 0, by_tx = {}, by_bytes = {}, replies = 0, first = pinfo.number, first_time = now }
        exchanges[key] = x
    end
    local info = { first = x.first }
    local numbered = tx ~= nil and tx > 0
    local seen = numbered and x.by_tx[tx] or (not numbered and x.by_bytes[datagram])
    if seen then
        -- The same transmission again: a copy the network (or a proxy) made, not a retransmission.
        info.duplicate = true
        info.record = seen
        info.attempt = x.requests
    else
        x.requests = x.requests + 1
        info.attempt = x.requests
        info.retransmission = (x.requests > 1) or (tx ~= nil and tx > 1)
        info.record = { number = pinfo.number, time = now }
        if numbered then x.by_tx[tx] = info.record else x.by_bytes[datagram] = info.record end
        x.last = info.record
    end
    frame_info[pinfo.number] = info
end

-- A reply answers the transmission whose number it echoes (version 2 quotes and batches), else
-- the latest request datagram before it (lists and version 1, which carry no number).
local function track_reply(pinfo, key, tx)
    local x = exchanges[key]
    local info = {}
    if x then
        local answered = (tx ~= nil and tx > 0) and x.by_tx[tx] or x.last
        local now = frame_time(pinfo)
        if answered then
            info.request_in = answered.number
            info.time = duration(now - answered.time)
            -- A second reply to one transmission is a copy; a reply to another one is not.
            info.duplicate = answered.response_in ~= nil
            answered.response_in = answered.response_in or pinfo.number
        end
        info.first = x.first
        info.time_since_first = duration(now - x.first_time)
        x.replies = x.replies + 1
    end
    frame_info[pinfo.number] = info
end

local function add_matching(t, number, is_request)
    local info = frame_info[number]
    if not info then return end
    local item
    if is_request then
        if info.record and info.record.response_in then
            t:add(f.response_in, info.record.response_in):set_generated()
        end
        t:add(f.attempt, info.attempt):set_generated()
        if info.first and info.first ~= number then
            t:add(f.first_request_in, info.first):set_generated()
        end
        if info.duplicate then
            item = t:add(f.duplicate, true)
            item:set_generated()
            item:add_proto_expert_info(e.duplicate)
        elseif info.retransmission then
            item = t:add(f.retransmission, true)
            item:set_generated()
            item:add_proto_expert_info(e.retransmission)
        end
    else
        if info.request_in then
            t:add(f.request_in, info.request_in):set_generated()
            t:add(f.time, info.time):set_generated()
        end
        if info.time_since_first then
            t:add(f.first_request_in, info.first):set_generated()
            t:add(f.time_since_first, info.time_since_first):set_generated()
        end
        if info.duplicate then
            item = t:add(f.duplicate, true)
            item:set_generated()
            item:add_proto_expert_info(e.duplicate)
        end
    end
end

------------------------------------------------------------------------------------------------
-- Bodies. Each returns a one-line summary for the Info column; `o` is the offset after the header.

local function add_money(t, field_text, field_cents, range)
    t:add(field_text, range, money(range))
    t:add(field_cents, range)
end

local function quote_request(buf, t, version)
    local qty, item = buf(12, 4):uint(), item_text(buf(16, ITEM_SIZE))
    t:add(f.quantity, buf(12, 4))
    t:add(f.item, buf(16, ITEM_SIZE), item)
    local tx = nil
    if version >= 2 then
        tx = buf(48, 1):uint()
        t:add(f.transmission, buf(48, 1))
        t:add(f.reserved, buf(49, 23))
    else
        t:add(f.reserved, buf(48, 24))
    end
    return string.format("%d x %s", qty, item), tx
end

local function quote_reply(buf, t, version)
    local status = buf(12, 1):uint()
    t:add(f.status, buf(12, 1))
    local tx = nil
    if version >= 2 then
        tx = buf(13, 1):uint()
        t:add(f.transmission, buf(13, 1))
    else
        t:add(f.flags_v1, buf(13, 1))
    end
    t:add(f.retry_after_ms, buf(14, 2))
    local qty, item = buf(16, 4):uint(), item_text(buf(20, ITEM_SIZE))
    t:add(f.quantity, buf(16, 4))
    t:add(f.item, buf(20, ITEM_SIZE), item)
    add_money(t, f.unit_price, f.unit_price_cents, buf(52, 8))
    add_money(t, f.total, f.total_cents, buf(60, 8))
    t:add(f.catalog_version, buf(68, 4))
    local text = string.format("%s %d x %s", STATUS[status] or ("status " .. status), qty, item)
    if status == 0 then text = text .. " = " .. money(buf(60, 8)) end
    return text, tx, status ~= 0
end

local function batch_request(buf, t, version, len)
    local count = buf(12, 1):uint()
    t:add(f.count, buf(12, 1))
    local tx = nil
    if version >= 2 then
        tx = buf(13, 1):uint()
        t:add(f.transmission, buf(13, 1))
        t:add(f.reserved, buf(14, 2))
    else
        t:add(f.reserved, buf(13, 3))
    end
    local lines = math.min(count, math.floor((len - 20) / 36))
    for i = 0, lines - 1 do
        local o = 16 + 36 * i
        local item = item_text(buf(o + 4, ITEM_SIZE))
        local lt = t:add(f.line, buf(o, 36), i + 1)
        lt:append_text(string.format(": %d x %s", buf(o, 4):uint(), item))
        lt:add(f.line_quantity, buf(o, 4))
        lt:add(f.line_item, buf(o + 4, ITEM_SIZE), item)
    end
    return string.format("%d lines", count), tx
end

local function batch_reply(buf, t, version, len)
    local status, count = buf(12, 1):uint(), buf(13, 1):uint()
    t:add(f.status, buf(12, 1))
    t:add(f.count, buf(13, 1))
    t:add(f.retry_after_ms, buf(14, 2))
    t:add(f.catalog_version, buf(16, 4))
    t:add(f.lines_digest, buf(20, 4))
    local tx, first = nil, 24
    if version >= 2 then
        tx = buf(24, 1):uint()
        t:add(f.transmission, buf(24, 1))
        first = 25
    end
    local lines = math.min(count, math.floor((len - first - CRC_SIZE) / 17))
    local failed = status ~= 0
    for i = 0, lines - 1 do
        local o = first + 17 * i
        local s = buf(o, 1):uint()
        local lt = t:add(f.line, buf(o, 17), i + 1)
        lt:append_text(": " .. (STATUS[s] or ("status " .. s)) .. (s == 0 and (" = " .. money(buf(o + 9, 8))) or ""))
        lt:add(f.line_status, buf(o, 1))
        add_money(lt, f.line_unit_price, f.line_unit_price_cents, buf(o + 1, 8))
        add_money(lt, f.line_total, f.line_total_cents, buf(o + 9, 8))
        if s ~= 0 then failed = true end
    end
    return string.format("%s, %d lines", STATUS[status] or ("status " .. status), count), tx, failed
end

local function list_request(buf, t, version)
    if version >= 2 then
        local prefix = item_text(buf(16, ITEM_SIZE))
        t:add(f.page, buf(12, 4))
        t:add(f.prefix, buf(16, ITEM_SIZE), prefix)
        t:add(f.reserved, buf(48, 618))
        local text = string.format("page %d", buf(12, 4):uint())
        if prefix ~= "" then text = text .. " prefix " .. prefix end
        return text, nil
    end
    t:add(f.page, buf(12, 2))
    t:add(f.reserved, buf(14, 648))
    return string.format("page %d", buf(12, 2):uint()), nil
end

local function list_reply(buf, t, version, len)
    local status, count = buf(12, 1):uint(), buf(13, 1):uint()
    t:add(f.status, buf(12, 1))
    t:add(f.count, buf(13, 1))
    local first, page
    if version >= 2 then
        t:add(f.page, buf(14, 4))
        t:add(f.pages, buf(18, 4))
        t:add(f.catalog_version, buf(22, 4))
        page, first = string.format("page %d of %d", buf(14, 4):uint(), buf(18, 4):uint()), 26
    else
        t:add(f.page, buf(14, 2))
        t:add(f.pages, buf(16, 2))
        t:add(f.catalog_version, buf(18, 4))
        page, first = string.format("page %d of %d", buf(14, 2):uint(), buf(16, 2):uint()), 22
    end
    local entries = math.min(count, math.floor((len - first - CRC_SIZE) / 40))
    for i = 0, entries - 1 do
        local o = first + 40 * i
        local item = item_text(buf(o, ITEM_SIZE))
        local et = t:add(f.entry, buf(o, 40), i + 1)
        et:append_text(": " .. item .. " @ " .. money(buf(o + 32, 8)))
        et:add(f.entry_item, buf(o, ITEM_SIZE), item)
        add_money(et, f.entry_unit_price, f.entry_unit_price_cents, buf(o + 32, 8))
    end
    return string.format("%s, %s, %d entries", STATUS[status] or ("status " .. status), page, count), nil, status ~= 0
end

local BODIES = {
    [1] = quote_request, [2] = quote_reply, [3] = batch_request,
    [4] = batch_reply, [5] = list_request, [6] = list_reply,
}

------------------------------------------------------------------------------------------------

local function add_crc(buf, t, len)
    local stored = buf(len - CRC_SIZE, CRC_SIZE):uint()
    local calculated = crc32(buf(0, len - CRC_SIZE):bytes())
    local good = stored == calculated
    local item = t:add(f.crc32, buf(len - CRC_SIZE, CRC_SIZE))
    item:append_text(good and " [correct]" or string.format(" [incorrect, should be 0x%08x]", calculated))
    item:add(f.crc32_status, buf(len - CRC_SIZE, CRC_SIZE), good and 1 or 0):set_generated()
    item:add(f.crc32_calculated, buf(len - CRC_SIZE, CRC_SIZE), calculated):set_generated()
    item:add_proto_expert_info(good and e.good_crc or e.bad_crc)
    return good
end

-- The 28-byte trailer of an AUTH message (its start given). The tag cannot be checked here: that
-- needs the shared secret, which a capture does not carry. The skew (timestamp minus the frame's
-- capture time, in seconds) is what the receiver's 300 s window judges (RFC 8945's fudge).
local function add_trailer(buf, pinfo, t, at)
    local at_tag = at + 12
    local ms = buf(at + 4, 8):uint64()
    local seconds = (ms / UInt64(1000)):tonumber()
    local millis = (ms % UInt64(1000)):tonumber()
    local at_t = t:add(f.auth, buf(at, AUTH_TRAILER_SIZE))
    at_t:append_text(string.format(": key id %d", buf(at, 4):uint()))
    at_t:add(f.auth_key_id, buf(at, 4))
    at_t:add(f.auth_timestamp, buf(at + 4, 8), NSTime.new(seconds, millis * 1000000))
    at_t:add(f.auth_timestamp_ms, buf(at + 4, 8))
    local skew = seconds + millis / 1000 - pinfo.abs_ts
    at_t:add(f.auth_skew, buf(at + 4, 8), math.floor(skew * 1e6 + 0.5) / 1e6):set_generated()
    local tag = at_t:add(f.auth_tag, buf(at_tag, AUTH_TAG_SIZE))
    tag:append_text(" [not verified: that needs the shared secret]")
    tag:add(f.auth_tag_check, buf(at_tag, AUTH_TAG_SIZE), TAG_NOT_VERIFIED):set_generated()
    return buf(at, 4):uint()
end

-- The length of the plain message an AUTH message carries: exactly 28 bytes before the CRC32 are
-- its trailer when the length fits; otherwise whatever lies past the plain message is not a trailer.
local function auth_body_len(buf, version, kind)
    local len, size = buf:len(), size_from_count(version, kind, buf)
    return (len >= size) and size or len
end

-- Shows the trailer of an AUTH message whose plain message is body_len bytes (its key id returned),
-- or, when the length does not fit, the bytes there raw and flagged (never a Lua error).
local function add_auth(buf, pinfo, t, body_len)
    local len = buf:len()
    if len == body_len + AUTH_TRAILER_SIZE then return add_trailer(buf, pinfo, t, body_len - CRC_SIZE) end
    if len > body_len then
        t:add(f.auth_trailer, buf(body_len - CRC_SIZE, len - body_len)):add_proto_expert_info(e.auth_bad_length)
    else
        t:add_proto_expert_info(e.auth_bad_length)
    end
    return nil
end

local function dissect(buf, pinfo, tree)
    local len = buf:len()
    if len < 16 then return 0 end
    pinfo.cols.protocol = "udp-price"
    local t = tree:add(p, buf(), "udp-price")
    local version, kind_byte = buf(2, 1):uint(), buf(3, 1):uint()
    local kind, flags = bit32.band(kind_byte, 0x3F), bit32.band(kind_byte, 0xC0)
    t:add(f.magic, buf(0, 2))
    t:add(f.version, buf(2, 1))
    local kt = t:add(f.kind_byte, buf(3, 1))
    kt:add(f.flag_auth, buf(3, 1))
    kt:add(f.flag_overloaded, buf(3, 1))
    kt:add(f.kind, buf(3, 1))
    local request_id = buf(4, 8):uint64()
    t:add(f.request_id, buf(4, 8))
    local good_crc = add_crc(buf, t, len)
    local body_fn = BODIES[kind]
    local known = (version == 1 or version == 2) and body_fn ~= nil
    local summary, tx, failed = "", nil, false
    local signed = known and bit32.band(flags, 0x80) ~= 0
    local body_len, key_id = signed and auth_body_len(buf, version, kind) or len, nil
    if known and size_fits(version, kind, body_len) then
        summary, tx, failed = body_fn(buf, t, version, body_len)
    elseif known then
        t:add(f.body, buf(12, len - 12 - CRC_SIZE)):add_proto_expert_info(e.bad_length)
        summary = string.format("%d bytes do not fit the kind", len)
    else
        t:add(f.body, buf(12, len - 12 - CRC_SIZE)):add_proto_expert_info(e.unknown)
        summary = string.format("version %d kind %d", version, kind)
    end
    if signed then key_id = add_auth(buf, pinfo, t, body_len) end
    local is_request = kind % 2 == 1
    if good_crc and known and not pinfo.visited then
        local key = exchange_key(pinfo, request_id, kind)
        if is_request then track_request(pinfo, key, tx, buf:raw()) else track_reply(pinfo, key, tx) end
    end
    add_matching(t, pinfo.number, is_request)
    if failed then t:add_proto_expert_info(e.failure) end
    local flag_text = (bit32.band(flags, 0x80) ~= 0 and " AUTH" or "") .. (bit32.band(flags, 0x40) ~= 0 and " OVERLOADED" or "")
    if key_id ~= nil then flag_text = flag_text .. " key=" .. key_id end
    local info = string.format("%s id=%s%s", KINDS[kind] or ("kind " .. kind), request_id:tohex(), flag_text)
    if tx ~= nil then info = info .. " tx=" .. tx end
    info = info .. " " .. summary
    if not good_crc then info = info .. " [BAD CRC32]" end
    local fi = frame_info[pinfo.number]
    if fi and fi.duplicate then info = info .. " [duplicate]"
    elseif fi and fi.retransmission then info = info .. " [retransmission]" end
    pinfo.cols.info = info
    t:append_text(", " .. info)
    return len
end

-- Called for the default port: a datagram there that is too short or lost its magic (truncated or
-- corrupted on the way) is shown as ours, flagged.
function p.dissector(buf, pinfo, tree)
    local len = buf:len()
    if len >= 16 and buf(0, 2):string() == MAGIC then return dissect(buf, pinfo, tree) end
    pinfo.cols.protocol = "udp-price"
    local t = tree:add(p, buf(), "udp-price")
    if len >= 16 then
        t:add(f.magic, buf(0, 2)):add_proto_expert_info(e.bad_magic)
        add_crc(buf, t, len)
        pinfo.cols.info = "not a udp-price message (bad magic)"
    else
        t:add(f.body, buf()):add_proto_expert_info(e.bad_length)
        pinfo.cols.info = string.format("truncated: %d bytes", len)
    end
    return len
end

-- Heuristic, for any other port: our magic, a known version and kind, and a length that fits the
-- kind (or, with the AUTH flag, one at least that long: a trailer of the wrong length is then
-- flagged, not hidden). The CRC32 is not required, so a corrupted
-- datagram is still recognised and flagged bad-CRC. Each datagram must pass this itself: the
-- heuristic never claims the conversation, so one forged datagram cannot take over another
-- protocol's conversation; the price is that a datagram truncated or without its magic on a
-- non-default port is left to other dissectors (decode it with "Decode As... udp_price").
local function heuristic(buf, pinfo, tree)
    local len = buf:len()
    if len < 16 or buf(0, 2):string() ~= MAGIC then return false end
    local version, kind_byte = buf(2, 1):uint(), buf(3, 1):uint()
    local kind = bit32.band(kind_byte, 0x3F)
    if version < 1 or version > 2 or not KINDS[kind] then return false end
    if bit32.band(kind_byte, 0x80) == 0 then
        if not size_fits(version, kind, len) then return false end
    elseif len < size_from_count(version, kind, buf) then
        return false
    end
    dissect(buf, pinfo, tree)
    return true
end

DissectorTable.get("udp.port"):add(DEFAULT_PORT, p)
p:register_heuristic("udp", heuristic)
