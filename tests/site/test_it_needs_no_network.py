"""The whole knowledge flow (load the model, ingest, embed, search) works with no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

NOTE = """# Compressor care

The intake filter of an air compressor is cleaned every 250 running hours.
A blocked filter makes the compressor run hot and wastes energy.
"""


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root, unshare and ip (a network namespace)")
def test_it_ingests_and_searches_inside_a_namespace_with_only_loopback(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    note = tmp_path / "compressor.md"
    note.write_text(NOTE)
    python = sys.executable
    script = (
        "ip link set lo up && "
        # Prove the namespace really is cut off: no route anywhere but loopback.
        f"! {python} -c 'import socket; socket.create_connection((\"1.1.1.1\", 443), timeout=3)' "
        "2>/dev/null && "
        f"{python} manage.py ingest --course offline-101 --create --sync {note} && "
        f"{python} manage.py search --course offline-101 --k 1 "
        "'how often is the intake filter cleaned'"
    )
    env = {**process_env, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[0])
    assert summary["ready"] == 1 and summary["failed"] == 0
    hit = json.loads(lines[-1])
    assert hit["filename"] == "compressor.md"
    assert "250 running hours" in hit["text"]
