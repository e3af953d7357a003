"""Files held by the emulator: uploads from users and the bot, photo sizes, getFile paths."""

from __future__ import annotations

import hashlib
import itertools
import mimetypes
import re
import secrets
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from aiohttp import web

# Telegram's getFile limit for bots; bigger files get "Bad Request: file is too big".
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
# The photo sizes Telegram generates (longest side: its "s", "m", "x", "y" sizes), smallest first;
# a photo sent the usual (not "HD") way is kept at most 1280 px, so bigger ones are downscaled.
PHOTO_SIDES = (90, 320, 800, 1280)
RENDITION_CACHE_SIZE = 256
_MIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*/[A-Za-z0-9][A-Za-z0-9.+_-]*$")


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    mime_type: str

    @property
    def file_size(self) -> int:
        return len(self.data)


def file_response(stored: StoredFile, *, headers: dict[str, str] | None = None) -> web.Response:
    """A stored file as a download, never a page: an uploaded .html or .svg opened from the emulator's
    origin could otherwise run script there and drive the Bot API and the client API as the user.
    <img> tags (the web chat) still show photos."""
    mime = stored.mime_type if _MIME_TYPE.match(stored.mime_type) else "application/octet-stream"
    name = stored.file_path.rsplit("/", 1)[-1]
    return web.Response(body=stored.data, headers={
        **(headers or {}), "Content-Type": mime, "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"})


class FileStore:
    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.by_id: dict[str, StoredFile] = {}
        self.by_path: dict[str, StoredFile] = {}
        self._renditions: dict[tuple[bytes, bool], list[tuple[bytes, int, int]]] = {}

    def clear(self) -> None:
        self.by_id.clear()
        self.by_path.clear()

    def add(self, data: bytes, *, folder: str, file_name: str | None = None,
            mime_type: str | None = None) -> StoredFile:
        number = next(self._counter)
        extension = _extension(file_name, mime_type, data)
        unique = hashlib.sha256(data).hexdigest()[:16]
        stored = StoredFile(
            file_id=f"EMU{number:06d}{secrets.token_urlsafe(18)}",
            file_unique_id=f"U{unique}",
            data=data,
            file_path=f"{folder}/file_{number}{extension}",
            mime_type=mime_type or mimetypes.guess_type(f"x{extension}")[0] or "application/octet-stream",
        )
        self.by_id[stored.file_id] = stored
        self.by_path[stored.file_path] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self.by_id.get(file_id)

    def add_photo(self, data: bytes, *, keep_original: bool = False) -> list[dict[str, Any]] | None:
        """Telegram's `photo` array, smallest first: JPEG downscales (longest side 90 ... 1280 px,
        those smaller than the image) and the original bytes as the largest size when the image is
        at most 1280 px. `keep_original` appends the original bytes whatever their size (a test
        can send an oversized photo and check the bot falls back to a smaller size).
        Returns None when the bytes are not a decodable image.
        """
        key = (hashlib.sha256(data).digest(), keep_original)
        renditions = self._renditions.get(key) or _render_photo(data, keep_original)
        if renditions is None:
            return None
        self._renditions[key] = renditions  # the same bytes sent again (load tests) reuse the work
        while len(self._renditions) > RENDITION_CACHE_SIZE:
            del self._renditions[next(iter(self._renditions))]
        return [self._photo_size(encoded, width, height) for encoded, width, height in renditions]

    def _photo_size(self, data: bytes, width: int, height: int) -> dict[str, Any]:
        stored = self.add(data, folder="photos", mime_type=_sniff_mime(data) or "image/jpeg")
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "width": width, "height": height, "file_size": stored.file_size}

    def add_document(self, data: bytes, *, file_name: str | None, mime_type: str | None) -> dict[str, Any]:
        if mime_type in (None, "", "application/octet-stream"):  # unknown: detect like Telegram apps
            mime_type = _sniff_mime(data) or mimetypes.guess_type(file_name or "")[0]
        mime = mime_type
        stored = self.add(data, folder="documents", file_name=file_name, mime_type=mime)
        document: dict[str, Any] = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                                    "file_size": stored.file_size, "mime_type": stored.mime_type}
        if file_name:
            document["file_name"] = file_name
        return document


def _render_photo(data: bytes, keep_original: bool) -> list[tuple[bytes, int, int]] | None:
    image = decode_image(data)
    if image is None:
        return None
    height, width = image.shape[:2]
    renditions: list[tuple[bytes, int, int]] = []
    for side in PHOTO_SIDES:
        scale = side / max(height, width)
        if scale >= 1:
            break
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 87])
        if ok:
            renditions.append((encoded.tobytes(), small.shape[1], small.shape[0]))
    if keep_original or max(height, width) <= PHOTO_SIDES[-1]:
        renditions.append((data, width, height))
    return renditions


def decode_image(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return image if image is not None and image.size else None


_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"), (b"RIFF", "image/webp"), (b"%PDF", "application/pdf"))


def _sniff_mime(data: bytes) -> str | None:
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def _extension(file_name: str | None, mime_type: str | None, data: bytes) -> str:
    if file_name and "." in file_name:
        suffix = "." + file_name.rsplit(".", 1)[1].lower()
        if suffix[1:].isalnum() and len(suffix) <= 6:
            return suffix
    mime = mime_type or _sniff_mime(data)
    guessed = mimetypes.guess_extension(mime) if mime else None
    return {".jpe": ".jpg", ".jpeg": ".jpg"}.get(guessed or "", guessed or "")
