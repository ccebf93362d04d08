#!/usr/bin/env python3
"""Readiness probe for the local Kafka broker (stdlib only, used by kafka.sh).

    kafka_ready.py HOST PORT [NODE_ID]

Sends ApiVersions, then a Metadata request (a non-flexible version, 4..8) and
exits 0 only if the broker answers and lists itself (NODE_ID at HOST:PORT) in
the metadata: in KRaft a broker appears there only once it is registered with
the controller and unfenced, i.e. ready for clients.
Exit codes: 0 ready, 1 not ready (yet), 3 no usable Metadata version (caller
should fall back to another check).
"""
import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18
CLIENT_ID = b"kafka.sh-ready"


def _request(sock, api_key, version, corr, body):
    header = struct.pack(">hhih", api_key, version, corr, len(CLIENT_ID)) + CLIENT_ID
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv(sock, 4))[0]
    data = _recv(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise RuntimeError("correlation id mismatch")
    return data[4:]  # response header v0 = correlation id only


def _recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s


def probe(host, port, node_id, timeout=3.0):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        r = _Reader(_request(sock, API_VERSIONS, 0, 1, b""))
        if r.take(">h") != 0:
            return 1
        ranges = {}
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            ranges[key] = (lo, hi)
        lo, hi = ranges.get(API_METADATA, (99, -1))
        version = min(hi, 8)
        if version < max(lo, 4):
            return 3
        body = struct.pack(">i", 0)  # topics: empty array (no topic metadata)
        body += b"\x00"  # allow_auto_topic_creation (v4+)
        if version >= 8:
            body += b"\x00\x00"  # include cluster/topic authorized operations
        r = _Reader(_request(sock, API_METADATA, version, 2, body))
        r.take(">i")  # throttle_time_ms
        for _ in range(r.take(">i")):
            nid = r.take(">i")
            bhost = r.string()
            bport = r.take(">i")
            r.string()  # rack
            if nid == node_id and bhost == host and bport == port:
                return 0
        return 1


def main(argv):
    host, port = argv[1], int(argv[2])
    node_id = int(argv[3]) if len(argv) > 3 else 1
    try:
        return probe(host, port, node_id)
    except Exception:  # not reachable / not ready / garbled answer: "not ready yet"
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
