"""Data: sources, row validation and quarantine, mixtures, chat formatting, the demo's world."""
from .format import EncodedRow, encode_row, render
from .load import load_mixture, load_rows
from .mixture import mix
from .quarantine import BadRowSink
from .rows import BadRow, ChatRow, parse_row
from .sources import SourceError, read_source, source_name
from .tokenizer import load_tokenizer, train_bpe_tokenizer

__all__ = ["ChatRow", "BadRow", "parse_row", "read_source", "source_name", "SourceError",
           "BadRowSink", "mix", "load_rows", "load_mixture", "EncodedRow", "encode_row", "render",
           "load_tokenizer", "train_bpe_tokenizer"]
