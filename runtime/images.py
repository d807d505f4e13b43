"""Reading image files with a pixel cap checked before decoding.

A file's header states its size; OpenCV allocates that many pixels before it looks at the
data, so a 3-line PPM that claims 50000 x 50000 pixels asks for 7.5 GB, and a real
30000 x 30000 PNG of 875 KB costs 5.3 GB and 22 s to decode. `read_image` reads the width
and height from the header (PNG, JPEG, BMP, PPM/PGM/PBM/PAM, WebP, TIFF, JPEG 2000; a few
hundred bytes, no decoding) and refuses an image over `max_pixels` with an `ImageError`
before OpenCV sees it. A file whose size cannot be read from its header is refused too
while a cap is set: an unread header is exactly what a cap must not trust.

    image = read_image("photo.jpg")                  # BGR uint8, at most DEFAULT_MAX_PIXELS
    image = read_image("scan.tif", max_pixels=None)  # no cap (trusted input only)
"""

from __future__ import annotations

import os
import struct

import numpy as np

from facemtl.runtime.errors import ImageError

# 50 megapixels: every phone camera's full-resolution photo (a 48 MP sensor gives 8000 x 6000)
# fits; decoded as BGR that is 150 MB, so predict stays well under 1 GB on any single input.
DEFAULT_MAX_PIXELS = 50_000_000

MAX_SIDE = 1 << 20  # OpenCV's CV_IO_MAX_IMAGE_WIDTH and _HEIGHT

FORMATS = "JPEG, PNG, BMP, PPM/PGM/PBM, WebP, TIFF, JPEG 2000"


class _Unknown(Exception):
    """The header does not say the size (not a format read here, or cut short)."""


def _png(d: bytes):
    if len(d) < 24 or d[12:16] != b"IHDR":
        raise _Unknown("PNG without an IHDR chunk")
    return struct.unpack(">II", d[16:24])


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(d: bytes):
    """The size in the first start-of-frame segment, walking the segments from SOI."""
    i = 2
    n = len(d)
    while i + 4 <= n:
        if d[i] != 0xFF:
            raise _Unknown(f"JPEG segment expected at byte {i}")
        marker = d[i + 1]
        if marker == 0xFF:  # fill bytes
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker == 0xD9 or marker == 0xDA:
            break  # end of image, or the scan began with no frame header before it
        length = struct.unpack(">H", d[i + 2:i + 4])[0]
        if marker in _SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", d[i + 5:i + 9])
            if h == 0:  # the height follows in a DNL segment after the first scan: untrusted
                raise _Unknown("JPEG whose height is given after its first scan (DNL)")
            return w, h
        if length < 2:
            raise _Unknown(f"JPEG segment of length {length} at byte {i}")
        i += 2 + length
    raise _Unknown("JPEG without a frame header")


def _bmp(d: bytes):
    if len(d) < 26:
        raise _Unknown("BMP header cut short")
    size = struct.unpack("<I", d[14:18])[0]
    if size == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack("<HH", d[18:22])
    else:
        w, h = struct.unpack("<ii", d[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _pnm(d: bytes):
    """P1-P6 (width, height in ASCII, comments allowed) and P7 (PAM: WIDTH and HEIGHT lines)."""
    if d[1:2] == b"7":
        fields = {}
        for line in d[2:4096].split(b"\n"):
            parts = line.split()
            if parts and parts[0] == b"ENDHDR":
                break
            if len(parts) >= 2 and parts[0] in (b"WIDTH", b"HEIGHT"):
                fields[parts[0]] = parts[1]
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            raise _Unknown("PAM header without WIDTH and HEIGHT") from None
    tokens: list[bytes] = []
    i, n = 2, min(len(d), 4096)
    while len(tokens) < 2 and i < n:
        c = d[i:i + 1]
        if c == b"#":
            while i < n and d[i:i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and not d[j:j + 1].isspace() and d[j:j + 1] != b"#":
                j += 1
            tokens.append(d[i:j])
            i = j
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        raise _Unknown("PNM header without a width and height") from None


def _webp(d: bytes):
    chunk = d[12:16]
    if chunk == b"VP8 " and len(d) >= 30:
        w, h = struct.unpack("<HH", d[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(d) >= 25:
        b = d[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    if chunk == b"VP8X" and len(d) >= 30:
        w = 1 + int.from_bytes(d[24:27], "little")
        h = 1 + int.from_bytes(d[27:30], "little")
        return w, h
    raise _Unknown("WebP without a VP8, VP8L or VP8X chunk")


def _tiff(d: bytes, f):
    """Width and height of the first image (IFD), the one OpenCV decodes; BigTIFF too."""
    e = "<" if d[:2] == b"II" else ">"
    big = struct.unpack(e + "H", d[2:4])[0] == 43

    def read(fmt: str, at: int):
        f.seek(at)
        size = struct.calcsize(e + fmt)
        b = f.read(size)
        if len(b) != size:
            raise _Unknown("TIFF directory past the end of the file")
        return struct.unpack(e + fmt, b)

    ifd = read("Q", 8)[0] if big else struct.unpack(e + "I", d[4:8])[0]
    count = read("Q" if big else "H", ifd)[0]
    if count > 4096:
        raise _Unknown(f"TIFF directory of {count} entries")
    entry, first = (20, ifd + 8) if big else (12, ifd + 2)
    size = {}
    for k in range(count):
        at = first + k * entry
        tag, typ = read("HH", at)
        if tag in (256, 257):
            value_at = at + (12 if big else 8)
            size[tag] = read("H" if typ == 3 else ("Q" if typ == 16 else "I"), value_at)[0]
            if len(size) == 2:
                return size[256], size[257]
    raise _Unknown("TIFF without ImageWidth and ImageLength")


def _jp2(d: bytes):
    """JPEG 2000: the `ihdr` box of a .jp2 file, or the SIZ segment of a raw codestream."""
    if d[:4] == b"\xff\x4f\xff\x51":
        xs, ys, xo, yo = struct.unpack(">IIII", d[8:24])
        return xs - xo, ys - yo
    i = d.find(b"ihdr")
    if i < 0 or i + 12 > len(d):
        raise _Unknown("JPEG 2000 without an ihdr box in its first 64 KB")
    h, w = struct.unpack(">II", d[i + 4:i + 12])
    return w, h


def image_size(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, format) from the file's header, without decoding; ImageError where the
    header does not tell (an unknown format, or a header cut short)."""
    try:
        with open(path, "rb") as f:
            d = f.read(65536)
            try:
                if d[:8] == b"\x89PNG\r\n\x1a\n":
                    return (*_png(d), "PNG")
                if d[:3] == b"\xff\xd8\xff":
                    return (*_jpeg(d), "JPEG")
                if d[:2] == b"BM":
                    return (*_bmp(d), "BMP")
                if len(d) >= 3 and d[:1] == b"P" and d[1:2] in b"1234567" and d[2:3].isspace():
                    return (*_pnm(d), "PNM")
                if d[:4] == b"RIFF" and d[8:12] == b"WEBP":
                    return (*_webp(d), "WebP")
                if d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                    return (*_tiff(d, f), "TIFF")
                if d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51":
                    return (*_jp2(d), "JPEG 2000")
            except (_Unknown, struct.error) as e:
                raise ImageError(f"{path}: cannot decode: its header does not give the image size ({e})") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if not d:
        raise ImageError(f"{path}: empty file")
    raise ImageError(f"{path}: cannot decode: not an image of a format whose size is checked before decoding "
                     f"({FORMATS})")


def check_size(path: str | os.PathLike, max_pixels: int | None) -> tuple[int, int] | None:
    """(width, height) from the header, ImageError if over `max_pixels`; None without a cap."""
    if max_pixels is None:
        return None
    w, h, fmt = image_size(path)
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: its {fmt} header gives a size of {w} x {h}")
    if max(w, h) > MAX_SIDE:  # OpenCV's own bound on a side: refuse it here, in a message that says so
        raise ImageError(f"{path}: {w} x {h} pixels: a side over {MAX_SIDE} pixels, more than OpenCV decodes")
    if w * h > max_pixels:
        raise ImageError(f"{path}: {w} x {h} pixels ({w * h / 1e6:.1f} MP) is over the limit of "
                         f"{max_pixels / 1e6:g} MP; raise it with --max-pixels if this image is trusted")
    return w, h


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """BGR uint8 image of a file (any bit depth or channel count OpenCV decodes).

    ImageError, naming the file, for a file that cannot be read, is over `max_pixels`
    (checked from the header, before decoding), or does not decode. Any OpenCV failure on
    the file is this file's ImageError, never another kind of exception.
    """
    import cv2

    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels}")
    check_size(path, max_pixels)
    if max_pixels is not None:
        # the file is read whole before decoding: bound it too (a small image with gigabytes of
        # trailing data or metadata), at 6 bytes a pixel, an uncompressed 16-bit RGB file's size
        limit = 6 * max_pixels + (1 << 20)
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
        if size > limit:
            raise ImageError(f"{path}: a file of {size / 1e6:.0f} MB is over the limit of {limit / 1e6:.0f} MB "
                             f"for {max_pixels / 1e6:g} MP; raise it with --max-pixels if this image is trusted")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ImageError(f"{path}: OpenCV cannot decode it ({_first_line(e)})") from None
    if image is None:
        raise ImageError(f"{path}: cannot decode: not an image, or corrupt, or a format OpenCV lacks")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        # a header this reader parsed one way and the decoder another: refuse all the same
        raise ImageError(f"{path}: decodes to {image.shape[1]} x {image.shape[0]} pixels, over the limit")
    return image


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


__all__ = ["DEFAULT_MAX_PIXELS", "image_size", "check_size", "read_image"]
