"""Image encoding with the infotext embedded where A1111 and Civitai look for it."""

from __future__ import annotations

import io

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_USER_COMMENT = 0x9286  # EXIF UserComment, in the Exif IFD
_EXIF_IFD = 0x8769


def encode_image(image, fmt: str, infotext: str) -> bytes:
    """PNG with a `parameters` text chunk; JPEG/WebP with the text in EXIF UserComment."""
    from PIL import Image, PngImagePlugin

    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
        image.save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()
    exif = Image.Exif()
    # piexif's UserComment "unicode" encoding, which A1111 writes and reads back.
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
    image.save(buf, format="JPEG" if fmt == "jpeg" else "WEBP", quality=95, exif=exif)
    return buf.getvalue()


def read_infotext(data: bytes) -> str | None:
    """The infotext embedded in an encoded image, if any."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if "parameters" in image.info:
        return image.info["parameters"]
    raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(raw, bytes) and raw.startswith(b"UNICODE\0"):
        return raw[8:].decode("utf-16-be")
    return None
