"""A SEEKTABLE for FLAC streams, one point per frame, so a crop seeks in one step.

libsndfile writes FLAC without a seek table, and libFLAC then finds a sample by a binary
search that decodes a frame at each probe: 0.17 ms of a 2 s crop's 1.3 ms at 48 kHz (bench
B8). With a point per frame, the seek lands on the right frame at once. The table costs 18
bytes per 4096-sample frame (0.4 % of a 48 kHz FLAC shard).

The frame offsets are found by parsing the frame headers the encoder wrote: a fixed-blocksize
stream (what libFLAC writes through libsndfile) whose frames are numbered 0, 1, 2, ...; a
header counts when its sync code, number, fields and CRC-8 all match, and the table is
added only when the frames found are exactly the ones the STREAMINFO announces. Anything
else is returned unchanged: still correct, only slower to seek.
"""

from __future__ import annotations

import struct

SEEKTABLE = 3  # metadata block type
_SYNC = b"\xff\xf8"  # 14-bit sync code, then the fixed-blocksize strategy bit
_HEADER_MAX = 16  # sync + 2 field bytes + up to 7 number bytes + 2 + 2 + CRC-8


def _crc8_table() -> bytes:
    table = bytearray(256)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table[byte] = crc
    return bytes(table)


_CRC8 = _crc8_table()


def crc8(data: bytes) -> int:
    """FLAC's frame-header CRC-8 (polynomial x^8 + x^2 + x + 1, initial 0)."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def _coded_number(data: bytes) -> tuple[int, int] | None:
    """The frame number coded UTF-8 style at the start of ``data``: ``(value, bytes)``."""
    first = data[0]
    if first < 0x80:
        return first, 1
    size = 8 - (first ^ 0xFF).bit_length()  # count of leading one bits
    if not 2 <= size <= 7 or len(data) < size:
        return None
    value = first & (0x7F >> size)
    for byte in data[1:size]:
        if byte & 0xC0 != 0x80:
            return None
        value = (value << 6) | (byte & 0x3F)
    return value, size


def _header_length(head: bytes) -> int | None:
    """Bytes of a frame header before its CRC-8, or None if the number is malformed."""
    number = _coded_number(head[4:])
    if number is None:
        return None
    length = 4 + number[1]
    length += {6: 1, 7: 2}.get(head[2] >> 4, 0)  # block size given explicitly
    length += {12: 1, 13: 2, 14: 2}.get(head[2] & 0x0F, 0)  # sample rate given explicitly
    return length


def _metadata(data: bytes) -> tuple[int, int, int] | None:
    """``(end of metadata, block size, total samples)`` of a plain fixed-blocksize FLAC
    stream without a seek table; None for anything else."""
    if data[:4] != b"fLaC" or len(data) < 42 or data[4] & 0x7F != 0:
        return None
    min_block, max_block = struct.unpack_from(">HH", data, 8)
    total = int.from_bytes(data[21:26], "big") & ((1 << 36) - 1)
    pos = 4
    while pos + 4 <= len(data):
        kind, size = data[pos] & 0x7F, int.from_bytes(data[pos + 1 : pos + 4], "big")
        if kind == SEEKTABLE:
            return None
        last, pos = data[pos] >> 7, pos + 4 + size
        if last:
            return (pos, min_block, total) if min_block == max_block and total else None
    return None


def frame_offsets(data: bytes, start: int, count: int) -> list[int] | None:
    """Byte offsets (from ``start``) of frames 0..count-1, or None if not all are found."""
    offsets: list[int] = []
    pos, first = start, None
    while len(offsets) < count:
        pos = data.find(_SYNC, pos)
        if pos < 0 or pos + 6 > len(data):
            return None
        head = data[pos : pos + _HEADER_MAX]
        length, number = _header_length(head), _coded_number(head[4:])
        fields = (head[2] & 0x0F, head[3])
        if (
            length is not None
            and length < len(head)
            and number[0] == len(offsets)
            and (first is None or (fields == first[:2] and head[2] >> 4 in (first[2], 6, 7)))
            and crc8(head[:length]) == head[length]
        ):
            first = first or (*fields, head[2] >> 4)
            offsets.append(pos - start)
            pos += length + 1
        else:
            pos += 1
    return offsets


def add_seektable(data: bytes) -> bytes:
    """``data`` with a SEEKTABLE block (one point per frame) after its STREAMINFO; ``data``
    unchanged when it is not a stream this module can index (see the module text)."""
    meta = _metadata(data)
    if meta is None:
        return data
    start, block, total = meta
    count = -(-total // block)
    offsets = frame_offsets(data, start, count)
    if offsets is None:
        return data
    points = b"".join(
        struct.pack(">QQH", k * block, offset, min(block, total - k * block))
        for k, offset in enumerate(offsets)
    )
    last = data[4] & 0x80  # the new block takes over STREAMINFO's "last block" flag
    header = bytes([SEEKTABLE | last]) + len(points).to_bytes(3, "big")
    return data[:4] + bytes([data[4] & 0x7F]) + data[5:42] + header + points + data[42:]
