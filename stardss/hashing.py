"""The one content hash of a sequence of text fields (STAR cache keys, tokenizer and chunk
fingerprints): sha256 over each field's UTF-8 bytes, each prefixed by its 8-byte length, so
("ab", "c") and ("a", "bc") never collide. Changing it changes every stored key."""
from __future__ import annotations

import hashlib


def hash_fields(*fields: str) -> str:
    h = hashlib.sha256()
    for f in fields:
        b = f.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


__all__ = ["hash_fields"]
