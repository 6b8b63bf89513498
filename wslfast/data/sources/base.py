"""What a source of records is: the interface through which the build reads every kind of input.

A source is a list of inputs (files) in a fixed order. Each input is read as a stream of `Block`s of at
most BLOCK_LINES raw items (for TAGS files: lines of text), and a block's items parse into `Record`s. The
build works block by block (one read task per input, one check task per block, a cache file per block),
so a block must depend only on the inputs, never on how many workers run. Record n (1-based, counted over
the items of its input, blank ones included) of input f is the record (f, n); `record_key` hashes that to
the 64-bit key from which every per-record random draw (label noise, copies, shuffle) derives, so the
output does not depend on how the work is split.

A new kind of input implements `Source` (it must pickle: it travels to the workers with the build's job):
`paths`, `blocks(file_no)` and `records(block)`. A record's `image` is either a path relative to the
images folder (the build opens it there, under its file checks) or a `MemberRef`: bytes stored inside an
input (a tar member of a webdataset / img2dataset shard), read by byte range with `read_member` when the
build checks the sample and again when it writes the shard, so nothing is unpacked to disk and no block
holds image bytes. Memory: one block at a time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

__all__ = ["Record", "Block", "Source", "MemberRef", "read_member", "record_key", "BLOCK_LINES"]

BLOCK_LINES = 4096  # items per block; fixed, so blocks (and their cached results) never depend on workers


@dataclass(frozen=True)
class MemberRef:
    """Image bytes inside an input file: `size` bytes at `offset` of `url` (a local path or an fsspec URL
    such as s3://bucket/00000.tar); `name` is the member's name, for messages. JSON-able as a list."""
    url: str
    offset: int
    size: int
    name: str

    def to_list(self) -> list:
        return [self.url, self.offset, self.size, self.name]

    @classmethod
    def from_list(cls, v) -> "MemberRef":
        return cls(str(v[0]), int(v[1]), int(v[2]), str(v[3]))


def read_member(ref: MemberRef, max_bytes: int | None = None) -> bytes:
    """The bytes of a member (one ranged read). Raises OSError when the input is shorter than the
    reference says (a truncated file) and ValueError above max_bytes."""
    if max_bytes is not None and ref.size > max_bytes:
        raise ValueError(f"{ref.url}:{ref.name}: {ref.size} bytes, above the limit of {max_bytes}")
    if "://" in ref.url and not ref.url.startswith("file://"):
        import fsspec  # only for remote inputs; local files need no extra package

        with fsspec.open(ref.url, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
    else:
        with open(ref.url.removeprefix("file://"), "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
    if len(data) != ref.size:
        raise OSError(f"{ref.url}:{ref.name}: truncated ({len(data)} of {ref.size} bytes)")
    return data


@dataclass
class Record:
    """One input record: an image and its hashtags (or other words that become labels)."""
    image: str | MemberRef | None  # a path under the images folder or bytes inside an input; None: skip says why
    tags: list[str]
    skip: str | None = None  # "video", "missing", "bad_record": counted in the manifest and dropped
    meta: dict = field(default_factory=dict)  # extra fields kept in the sample's .json (e.g. yfcc_id)


@dataclass
class Block:
    """Up to BLOCK_LINES raw items of one input: picklable, so it moves between processes as it is."""
    file_no: int  # the input's position in the source's list
    block_no: int  # item i of the block is item block_no * BLOCK_LINES + i + 1 of the input
    kind: str  # the input's format (e.g. "jsonl", "yfcc"): how the items parse; listed in the manifest
    items: list


@runtime_checkable
class Source(Protocol):
    """An input kind (see the module docstring); `TagFiles` is today's. write_shards takes one in place of
    TAGS paths."""
    paths: list[str]

    def blocks(self, file_no: int) -> Iterator[Block]:
        """The blocks of input `file_no`, in order, streaming."""

    def records(self, block: Block) -> Iterator[tuple[int, Record]]:
        """(n, record) for the block's non-blank items; n numbers the item within its input (1-based)."""


def record_key(file_no: int, line_no: int) -> int:
    """The 64-bit key of record (file_no, line_no) (see the module docstring)."""
    return int.from_bytes(hashlib.blake2b(f"{file_no}:{line_no}".encode(), digest_size=8).digest(), "little")
