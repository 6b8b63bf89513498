"""What a source of records is: the interface through which the build reads every kind of input.

A source is a list of inputs (files) in a fixed order. Each input is read as a stream of `Block`s of at
most BLOCK_LINES raw items (for TAGS files: lines of text), and a block's items parse into `Record`s. The
build works block by block (one read task per input, one check task per block, a cache file per block),
so a block must depend only on the inputs, never on how many workers run. Record n (1-based, counted over
the items of its input, blank ones included) of input f is the record (f, n); `record_key` hashes that to
the 64-bit key from which every per-record random draw (label noise, copies, shuffle) derives, so the
output does not depend on how the work is split.

A new kind of input implements `Source` (it must pickle: it travels to the workers with the build's job):
`paths`, `blocks(file_no)` and `records(block)`, with each record's `image` a path relative to the
images folder (the build decode-checks and reads it from there). Memory: one block at a time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

__all__ = ["Record", "Block", "Source", "record_key", "BLOCK_LINES"]

BLOCK_LINES = 4096  # items per block; fixed, so blocks (and their cached results) never depend on workers


@dataclass
class Record:
    """One input record: an image and its hashtags (or other words that become labels)."""
    image: str | None  # path relative to the images folder; None when no file was found (skip says why)
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
