#!/usr/bin/env python3
"""read_tfevents.py - read a TensorBoard event file with no TensorFlow or
TensorBoard: the independent reader of what tidal's controller writes under
RUN/tb/ (controller/tbevents.c, docs/tensorboard.md).

It checks the TFRecord framing (uint64 length, little endian; masked CRC-32C of
the length; data; masked CRC-32C of the data) with its own CRC-32C, decodes
each Event from the protobuf wire format by hand (the field numbers of
TensorBoard's event.proto, summary.proto and tensor.proto), and prints the
scalars and texts.

  read_tfevents.py PATH [--json]   PATH is an event file, or a directory whose
                                   events.out.tfevents.* files are read in name
                                   order. Text: one line per scalar
                                   ("step TAG VALUE") and per text value; --json:
                                   {"file_version", "scalars": [{step, wall_time,
                                   tag, value}], "texts": [{step, tag, plugin,
                                   values: [str]}]}
  read_tfevents.py --selftest      the CRC-32C against RFC 3720's test vectors

Exit 0; 1 with a message naming the file, the record and the byte offset when
a file is truncated, a CRC does not match, the protobuf is malformed, or the
first record is not the file version; 2 on bad usage.
"""
import json
import os
import struct
import sys

POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
TABLE = []
for b in range(256):
    c = b
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(data):
    c = 0xFFFFFFFF
    for byte in data:
        c = TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class Bad(Exception):
    pass


def fields(buf):
    """(field number, wire type, value) of each field of a protobuf message:
    an int for varint, bytes for fixed64 / fixed32 / length-delimited."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        v, shift = 0, 0
        while True:
            if i >= n:
                raise Bad("a varint runs past the end of the message")
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7
            if shift > 63:
                raise Bad("a varint longer than 10 bytes")

    while i < n:
        key = varint()
        num, wt = key >> 3, key & 7
        if num == 0:
            raise Bad("field number 0")
        if wt == 0:
            yield num, wt, varint()
        elif wt == 1 or wt == 5:
            size = 8 if wt == 1 else 4
            if i + size > n:
                raise Bad(f"field {num}: a fixed{size * 8} past the end of the message")
            yield num, wt, buf[i:i + size]
            i += size
        elif wt == 2:
            size = varint()
            if i + size > n:
                raise Bad(f"field {num}: {size} bytes declared, {n - i} left in the message")
            yield num, wt, buf[i:i + size]
            i += size
        else:
            raise Bad(f"field {num}: wire type {wt} (groups and unknown types are not written by tidal)")


def want(num, wt, expect, what):
    if wt != expect:
        raise Bad(f"{what} (field {num}) has wire type {wt}, want {expect}")


def decode_tensor(buf):
    t = {"dtype": 0, "shape": [], "string_val": []}
    for num, wt, v in fields(buf):
        if num == 1:
            want(num, wt, 0, "TensorProto.dtype")
            t["dtype"] = v
        elif num == 2:
            want(num, wt, 2, "TensorProto.tensor_shape")
            for dn, dwt, dv in fields(v):
                if dn == 2:
                    want(dn, dwt, 2, "TensorShapeProto.dim")
                    size = 0
                    for sn, swt, sv in fields(dv):
                        if sn == 1:
                            want(sn, swt, 0, "Dim.size")
                            size = sv - (1 << 64) if sv >= 1 << 63 else sv
                    t["shape"].append(size)
        elif num == 8:
            want(num, wt, 2, "TensorProto.string_val")
            t["string_val"].append(v.decode("utf-8", "replace"))
    return t


def decode_value(buf):
    val = {"tag": "", "plugin": "", "simple_value": None, "tensor": None}
    for num, wt, v in fields(buf):
        if num == 1:
            want(num, wt, 2, "Summary.Value.tag")
            val["tag"] = v.decode("utf-8", "replace")
        elif num == 2:
            want(num, wt, 5, "Summary.Value.simple_value")
            val["simple_value"] = struct.unpack("<f", v)[0]
        elif num == 8:
            want(num, wt, 2, "Summary.Value.tensor")
            val["tensor"] = decode_tensor(v)
        elif num == 9:
            want(num, wt, 2, "Summary.Value.metadata")
            for mn, mwt, mv in fields(v):
                if mn == 1:
                    want(mn, mwt, 2, "SummaryMetadata.plugin_data")
                    for pn, pwt, pv in fields(mv):
                        if pn == 1:
                            want(pn, pwt, 2, "PluginData.plugin_name")
                            val["plugin"] = pv.decode("utf-8", "replace")
    return val


def decode_event(buf):
    ev = {"wall_time": 0.0, "step": 0, "file_version": None, "values": []}
    for num, wt, v in fields(buf):
        if num == 1:
            want(num, wt, 1, "Event.wall_time")
            ev["wall_time"] = struct.unpack("<d", v)[0]
        elif num == 2:
            want(num, wt, 0, "Event.step")
            ev["step"] = v - (1 << 64) if v >= 1 << 63 else v
        elif num == 3:
            want(num, wt, 2, "Event.file_version")
            ev["file_version"] = v.decode("utf-8", "replace")
        elif num == 5:
            want(num, wt, 2, "Event.summary")
            for sn, swt, sv in fields(v):
                if sn == 1:
                    want(sn, swt, 2, "Summary.value")
                    ev["values"].append(decode_value(sv))
    return ev


def records(path):
    """Each record's data, its CRCs checked; Bad naming the record and offset otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    at, index = 0, 0
    while at < len(data):
        where = f"{path}: record {index} at byte {at}"
        if len(data) - at < 12:
            raise Bad(f"{where}: truncated: {len(data) - at} bytes, less than a record's 12-byte header")
        (length,) = struct.unpack_from("<Q", data, at)
        (len_crc,) = struct.unpack_from("<I", data, at + 8)
        if masked(crc32c(data[at:at + 8])) != len_crc:
            raise Bad(f"{where}: the length's CRC does not match (stored {len_crc:#010x}, "
                      f"computed {masked(crc32c(data[at:at + 8])):#010x}): the file is corrupt")
        if len(data) - at - 12 < length + 4:
            raise Bad(f"{where}: truncated: {length} data bytes + 4 declared, {len(data) - at - 12} left")
        body = data[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack_from("<I", data, at + 12 + length)
        if masked(crc32c(body)) != data_crc:
            raise Bad(f"{where}: the data's CRC does not match (stored {data_crc:#010x}, "
                      f"computed {masked(crc32c(body)):#010x}): the file is corrupt")
        yield index, at, body
        at += 12 + length + 4
        index += 1


def read(paths):
    out = {"file_version": None, "scalars": [], "texts": []}
    for path in paths:
        for index, at, body in records(path):
            try:
                ev = decode_event(body)
            except Bad as e:
                raise Bad(f"{path}: record {index} at byte {at}: not an Event: {e}")
            if index == 0:
                if not (ev["file_version"] or "").startswith("brain.Event:"):
                    raise Bad(f"{path}: the first record is not the file version (brain.Event:N)")
                out["file_version"] = ev["file_version"]
            for v in ev["values"]:
                if v["simple_value"] is not None:
                    out["scalars"].append({"step": ev["step"], "wall_time": ev["wall_time"], "tag": v["tag"],
                                           "value": v["simple_value"]})
                elif v["tensor"] is not None:
                    out["texts"].append({"step": ev["step"], "tag": v["tag"], "plugin": v["plugin"],
                                         "values": v["tensor"]["string_val"]})
    return out


def selftest():
    vectors = [(bytes(32), 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43), (bytes(range(32)), 0x46DD794E),
               (bytes(range(31, -1, -1)), 0x113FDB5C), (b"123456789", 0xE3069283)]
    for data, crc in vectors:
        if crc32c(data) != crc:
            print(f"read_tfevents: CRC-32C of {data[:9]!r}...: {crc32c(data):#010x}, want {crc:#010x}",
                  file=sys.stderr)
            return 1
    print("read_tfevents: CRC-32C matches RFC 3720's test vectors")
    return 0


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = [a for a in argv[1:] if a.startswith("--")]
    if flags == ["--selftest"] and not args:
        return selftest()
    if len(args) != 1 or any(f != "--json" for f in flags):
        print(__doc__, file=sys.stderr)
        return 2
    path = args[0]
    if os.path.isdir(path):
        paths = sorted(os.path.join(path, n) for n in os.listdir(path) if n.startswith("events.out.tfevents."))
        if not paths:
            print(f"read_tfevents: {path}: no events.out.tfevents.* file", file=sys.stderr)
            return 1
    else:
        paths = [path]
    try:
        out = read(paths)
    except Bad as e:
        print(f"read_tfevents: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"read_tfevents: {e}", file=sys.stderr)
        return 1
    if "--json" in flags:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"file_version {out['file_version']}")
        for s in out["scalars"]:
            print(f"{s['step']} {s['tag']} {s['value']!r}")
        for t in out["texts"]:
            for i, text in enumerate(t["values"]):
                print(f"{t['step']} {t['tag']}[{i}] ({t['plugin']}): {json.dumps(text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
