"""An upload handler that drops a file as soon as it grows past the size limit.

Django streams uploads through its handlers chunk by chunk; this one is first in the chain,
so an oversized file is refused before it is read whole or written anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, SkipFile

logger = logging.getLogger(__name__)


class SizeLimitUploadHandler(FileUploadHandler):
    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > settings.TUTOR_MAX_UPLOAD_BYTES:
            refused = getattr(self.request, "oversized_files", [])
            refused.append(self.file_name)
            self.request.oversized_files = refused  # type: ignore[union-attr]
            logger.warning(
                "refused upload %s: over %d bytes", self.file_name, settings.TUTOR_MAX_UPLOAD_BYTES
            )
            raise SkipFile()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
