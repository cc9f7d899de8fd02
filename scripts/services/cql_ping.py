#!/usr/bin/env python3
"""Check that a Cassandra node really answers CQL (not just an open port).

Speaks the CQL native protocol v4 directly (standard library only, so it
works before any project dependency is installed):
  OPTIONS -> SUPPORTED, STARTUP -> READY,
  QUERY "SELECT release_version FROM system.local" -> ROWS.
Prints the release version and exits 0 on success; prints the reason on
stderr and exits 1 otherwise.

Usage: cql_ping.py [host] [port] [timeout_seconds]
"""
import socket
import struct
import sys

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_OPTIONS, OP_SUPPORTED, OP_QUERY, OP_RESULT = 0x05, 0x06, 0x07, 0x08
RESULT_ROWS = 0x0002
CONSISTENCY_ONE = 0x0001


class CqlError(Exception):
    pass


def _string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise CqlError("connection closed by server")
        buf += chunk
    return buf


def _request(sock, stream, opcode, body=b""):
    sock.sendall(struct.pack(">BBhBI", VERSION, 0, stream, opcode, len(body)) + body)
    version, _flags, _stream, op, length = struct.unpack(">BBhBI", _recv_exact(sock, 9))
    if version & 0x7F != VERSION:
        raise CqlError("unexpected protocol version 0x%02x" % version)
    payload = _recv_exact(sock, length)
    if op == OP_ERROR:
        code, mlen = struct.unpack(">iH", payload[:6])
        raise CqlError("server error 0x%04x: %s" % (code, payload[6:6 + mlen].decode("utf-8", "replace")))
    return op, payload


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def unpack(self, fmt):
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self):
        n = self.unpack(">H")
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def bytes_(self):
        n = self.unpack(">i")
        if n < 0:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


def _first_text_cell(payload):
    """Return the first cell of a ROWS result whose single column is text."""
    r = _Reader(payload)
    if r.unpack(">i") != RESULT_ROWS:
        raise CqlError("query did not return rows")
    flags, ncols = r.unpack(">ii")
    if flags & 0x0002:  # has_more_pages: skip the paging state
        r.bytes_()
    if not flags & 0x0004:  # metadata present
        global_spec = flags & 0x0001
        if global_spec:
            r.string(), r.string()
        for _ in range(ncols):
            if not global_spec:
                r.string(), r.string()
            r.string()  # column name
            r.unpack(">H")  # type id (varchar: no extra info)
    if r.unpack(">i") < 1:
        raise CqlError("system.local returned no row")
    cell = r.bytes_()
    return cell.decode() if cell is not None else "?"


def ping(host, port, timeout):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        op, _ = _request(sock, 1, OP_OPTIONS)
        if op != OP_SUPPORTED:
            raise CqlError("OPTIONS answered with opcode 0x%02x" % op)
        op, _ = _request(sock, 2, OP_STARTUP, struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0"))
        if op == OP_AUTHENTICATE:
            return "unknown (authentication required; handshake OK)"
        if op != OP_READY:
            raise CqlError("STARTUP answered with opcode 0x%02x" % op)
        query = b"SELECT release_version FROM system.local"
        body = struct.pack(">i", len(query)) + query + struct.pack(">HB", CONSISTENCY_ONE, 0)
        op, payload = _request(sock, 3, OP_QUERY, body)
        if op != OP_RESULT:
            raise CqlError("QUERY answered with opcode 0x%02x" % op)
        return _first_text_cell(payload)


def main(argv):
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    port = int(argv[2]) if len(argv) > 2 else 9042
    timeout = float(argv[3]) if len(argv) > 3 else 3.0
    try:
        print(ping(host, port, timeout))
    except (OSError, CqlError, struct.error, UnicodeDecodeError) as exc:
        print("CQL check of %s:%d failed: %s" % (host, port, exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
