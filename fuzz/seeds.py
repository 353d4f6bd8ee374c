#!/usr/bin/env python3
"""Write seed streams for the fuzz targets into corpus/decode and corpus/extract.

Small, valid (and a few deliberately hostile) xbstream archives covering every chunk kind of
both dialects, so the fuzzers start from real structure instead of guessing CRCs.
Run from anywhere: python3 fuzz/seeds.py
"""
import os
import struct
import zlib

MAGIC = b"XBSTCK01"


def prefix(flags, ty, path):
    return MAGIC + bytes([flags, ord(ty)]) + struct.pack("<I", len(path)) + path


def p(path, off, data, flags=0):
    return prefix(flags, "P", path) + struct.pack("<QQI", len(data), off, zlib.crc32(data)) + data


def e(path, flags=0):
    return prefix(flags, "E", path)


def sparse(path, off, entries, data):
    m = b"".join(struct.pack("<II", s, l) for s, l in entries)
    crc = zlib.crc32(m + data)
    return prefix(0, "S", path) + struct.pack("<IQQI", len(entries), len(data), off, crc) + m + data


def seek(path, off):
    return prefix(0, "S", path) + struct.pack("<Q", off)


def d(path):
    return prefix(0, "D", path)


def r(path, to):
    return prefix(0, "R", path) + struct.pack("<I", len(to)) + to


def other(ty, path, off, data, flags=1):
    return prefix(flags, ty, path) + struct.pack("<QQI", len(data), off, zlib.crc32(data)) + data


SEEDS = {
    "empty": b"",
    "one-file": p(b"ibdata1", 0, b"hello world\n") + e(b"ibdata1"),
    "empty-file": e(b"db/empty"),
    "two-chunks": p(b"db/t1.ibd", 0, b"abc") + p(b"db/t1.ibd", 3, b"defg") + e(b"db/t1.ibd"),
    "interleaved": p(b"a", 0, b"1") + p(b"b/c", 0, b"2") + p(b"a", 1, b"3") + e(b"b/c") + e(b"a"),
    "percona-sparse": p(b"t.ibd", 0, b"head")
    + sparse(b"t.ibd", 4, [(0, 3), (10, 2), (5, 0)], b"abcde")
    + e(b"t.ibd"),
    "mariadb-seek": p(b"m.ibd", 0, b"xx") + seek(b"m.ibd", 100) + p(b"m.ibd", 100, b"yy") + e(b"m.ibd"),
    "mariadb-ddl": p(b"db/t.frm", 0, b"frm")
    + e(b"db/t.frm")
    + r(b"db/t.frm", b"db/u.frm")
    + p(b"db/gone", 0, b"g")
    + e(b"db/gone")
    + d(b"db/gone")
    + p(b"db/u.frm", 0, b"new", flags=2)
    + e(b"db/u.frm"),
    "ignorable": p(b"a", 0, b"1") + other("X", b"ghost", 0, b"boo") + e(b"a"),
    "symlink-dir": p(b"d/victim", 0, b"pwned") + e(b"d/victim"),
    "symlink-file": p(b"f", 0, b"pwned", flags=2) + e(b"f"),
    "hardlink-rewrite": p(b"h", 0, b"pwned", flags=2) + e(b"h"),
    "fifo-rewrite": p(b"p", 0, b"pwned", flags=2) + e(b"p"),
    "existing": p(b"existing", 0, b"pwned") + e(b"existing"),
    "remove-through-link": d(b"d/victim"),
    "rename-through-link": p(b"a", 0, b"1") + e(b"a") + r(b"a", b"d/stolen"),
    "rename-from-link": r(b"d/victim", b"got"),
    "traversal": p(b"../x", 0, b"pwned") + e(b"../x"),
    "truncated": (p(b"a", 0, b"0123456789"))[:-3],
    "no-eof": p(b"a", 0, b"1"),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for target in ("decode", "extract"):
        out = os.path.join(here, "corpus", target)
        os.makedirs(out, exist_ok=True)
        for name, data in SEEDS.items():
            with open(os.path.join(out, "seed-" + name), "wb") as f:
                f.write(data)
    print(f"wrote {len(SEEDS)} seeds into {os.path.join(here, 'corpus')}/{{decode,extract}}")


if __name__ == "__main__":
    main()
