"""Readers of each kind of input, behind one interface (`Source`, `Block`, `Record`: see base.py).

The kinds: TAGS files (JSONL or YFCC100M metadata in every released form, plain or compressed, several
files or globs), `TagFiles`, with YFCC's options (text fields, subset filter, hash file) in `YfccOptions`
and `IdIndex`; webdataset / img2dataset tars (+ parquet), `WebDataset` over `expand_urls(...)`.
The build (wslfast.data.build) reads every input through a Source, block by block.
"""
from .base import BLOCK_LINES, Block, MemberRef, Record, Source, read_member, record_key
from .streams import DamagedStreamError, expand_inputs, open_text
from .tagfiles import TagFiles, TagRecord, count_tags, detect_format, iter_tags, parse_line, read_tags
from .yfcc import TEXT_FIELDS, YfccOptions
from .yfcc_index import IdIndex
from .webdataset import WebDataset, expand_urls

__all__ = ["Source", "Block", "Record", "MemberRef", "read_member", "record_key", "BLOCK_LINES", "TagFiles", "TagRecord", "detect_format",
           "iter_tags", "read_tags", "count_tags", "parse_line", "expand_inputs", "open_text", "DamagedStreamError",
           "YfccOptions", "IdIndex", "TEXT_FIELDS", "WebDataset", "expand_urls"]
