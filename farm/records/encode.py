"""Image encoding with the infotext embedded where A1111 and Civitai look for it."""

from __future__ import annotations

import io

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_USER_COMMENT = 0x9286  # EXIF UserComment, in the Exif IFD
_EXIF_IFD = 0x8769


def encode_image(image, fmt: str, infotext: str) -> bytes:
    """PNG with a `parameters` text chunk; JPEG/WebP with the text in EXIF UserComment."""
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
        image.save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()
    # piexif's UserComment "unicode" encoding, which A1111 writes and reads back.
    exif = _exif_user_comment(b"UNICODE\0" + infotext.encode("utf-16-be"))
    image.save(buf, format="JPEG" if fmt == "jpeg" else "WEBP", quality=95, exif=exif)
    return buf.getvalue()


def _exif_user_comment(comment: bytes) -> bytes:
    """An EXIF block holding only UserComment, laid out as piexif.dump (A1111's writer)
    lays it out: a big-endian TIFF whose IFD0 points to an Exif IFD with one entry, the
    comment as UNDEFINED bytes. Pillow's Exif would store bytes as BYTE, which piexif reads
    back as a tuple of ints, and A1111's PNG Info then fails on it."""
    import struct

    exif_ifd = 8 + 2 + 12 + 4  # after the header and IFD0 (count, one entry, next IFD)
    data = exif_ifd + 2 + 12 + 4
    tiff = b"MM\0*" + struct.pack(">I", 8)
    tiff += struct.pack(">HHHIII", 1, _EXIF_IFD, 4, 1, exif_ifd, 0)  # LONG offset
    tiff += struct.pack(">HHHIII", 1, _USER_COMMENT, 7, len(comment), data, 0)  # UNDEFINED
    return b"Exif\0\0" + tiff + comment


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
