"""The embedding model run by ONNX Runtime: the vectors PyTorch gives, from an export made once
from the installed model's own weights, rebuilt when damaged, and PyTorch on request."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from knowledge import embedding

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "Lockout.",
    "Each technician applies their own padlock to every isolation point, or to the group "
    "lockbox, and nobody works under another person's lock.",
    "Halve the regreasing interval for every 15 C that the bearing runs above 70 C.",
    "A much longer passage about vibration: " + "overall velocity in mm/s RMS, " * 30,
]


@pytest.fixture
def fresh_encoder() -> Iterator[None]:
    """Each test builds the encoder anew, and leaves the default one behind it."""
    embedding.onnx_encoder.cache_clear()
    yield
    embedding.onnx_encoder.cache_clear()


def test_it_gives_pytorchs_vectors_for_one_text_and_for_padded_batches(
    fresh_encoder: None,
) -> None:
    encoder = embedding.onnx_encoder()
    assert encoder is not None  # the default runtime
    assert embedding.onnx_file().is_file()
    expected = embedding._torch_encode(TEXTS, 64)
    for batch in (1, 2, 64):  # batches pad shorter texts to the longest
        got = encoder.encode(TEXTS, batch)
        assert got.shape == expected.shape == (len(TEXTS), embedding.dimensions())
        assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(embedding.embed(TEXTS), axis=1), 1.0, atol=1e-5)
    # A text longer than the model reads is cut as sentence-transformers cuts it.
    assert np.abs(embedding.embed([TEXTS[3]]) - expected[3]).max() < 1e-5


def test_a_damaged_export_is_made_again(
    fresh_encoder: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "VAR_DIR", tmp_path)
    damaged = embedding.onnx_file()
    assert damaged.parent.parent == tmp_path
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"half a file")
    encoder = embedding.onnx_encoder()
    assert encoder is not None
    assert damaged.stat().st_size > 1_000_000  # the model again, not the damaged bytes
    expected = embedding._torch_encode(TEXTS[:2], 8)
    assert np.abs(encoder.encode(TEXTS[:2], 8) - expected).max() < 1e-5


def test_pytorch_encodes_when_asked_to(
    fresh_encoder: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "TUTOR_EMBEDDING_RUNTIME", "torch")
    assert embedding.onnx_encoder() is None
    vectors = embedding.embed(TEXTS[:2])
    assert np.abs(vectors - embedding._torch_encode(TEXTS[:2], 8)).max() == 0.0


def test_an_unknown_runtime_is_refused_at_start() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tutor_site.settings",
        "TUTOR_EMBEDDING_RUNTIME": "tensorflow",
    }
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "TUTOR_EMBEDDING_RUNTIME must be onnx or torch, not 'tensorflow'" in out.stderr
