"""Safe decoding (data/decode.py): every odd but valid image decodes; every bad one is an ImageReadError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from oneshot.data.decode import decode_image
from oneshot.errors import ImageReadError


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def stroke(size: int = 40) -> np.ndarray:
    """Grey (size, size): white paper with a black vertical bar in the left third."""
    image = np.full((size, size), 255, dtype=np.uint8)
    image[5:-5, 5:12] = 0
    return image


def test_plain_grey_png_round_trips():
    pixels = stroke()
    assert np.array_equal(decode_image(encoded(Image.fromarray(pixels)), "a.png"), pixels)


def test_colour_is_bgr_and_grey_is_luminance():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    data = encoded(Image.fromarray(rgb, "RGB"))
    bgr = decode_image(data, "red.png", color=True)
    assert bgr.shape == (4, 4, 3) and (bgr[..., 2] == 255).all() and (bgr[..., :2] == 0).all()
    grey = decode_image(data, "red.png")
    assert grey.shape == (4, 4) and abs(int(grey[0, 0]) - 76) <= 1  # 0.299 * 255


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"<!DOCTYPE html><html><body>404 not found</body></html>", "an HTML page"),
    (b"just some notes, saved with the wrong name\n", "a text file"),
    (bytes(range(256)) * 4, "unrecognised bytes"),
])
def test_non_images_are_named_with_a_reason(data, reason):
    with pytest.raises(ImageReadError, match=rf"x\.png: .*{reason}"):
        decode_image(data, "x.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt):
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)), fmt)
    with pytest.raises(ImageReadError, match="cut.img: "):
        decode_image(data[: len(data) // 2], "cut.img")


def test_sixteen_bit_grey_uses_the_full_range():
    values = np.array([[0, 65535], [32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    out = decode_image(encoded(image), "deep.png")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 255], [128, 255]]


def test_palette_and_cmyk_images_decode():
    pixels = stroke()
    palette = Image.fromarray(pixels).convert("P")
    assert np.array_equal(decode_image(encoded(palette), "p.png"), pixels)
    cmyk = Image.fromarray(pixels).convert("RGB").convert("CMYK")
    out = decode_image(encoded(cmyk, "JPEG", quality=100), "c.jpg")
    assert out.shape == pixels.shape and out[20, 8] < 60 and out[20, 30] > 200


def test_exif_orientation_is_applied():
    pixels = np.full((10, 30), 255, dtype=np.uint8)  # wide image, ink at the left end
    pixels[:, :3] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    out = decode_image(encoded(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=100), "photo.jpg")
    assert out.shape == (30, 10)
    assert out[:3].mean() < 60 and out[-3:].mean() > 200  # the ink is now on top


@pytest.mark.parametrize("strokes_light", [False, True])
def test_transparent_background_keeps_strokes_visible(strokes_light):
    # Strokes exist only in alpha: colour is the same everywhere (as drawing apps often save).
    colour = 255 if strokes_light else 0
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[5:-5, 5:12, 3] = 255
    out = decode_image(encoded(Image.fromarray(rgba, "RGBA")), "drawn.png")
    inside, outside = float(out[20, 8]), float(out[20, 30])
    assert abs(inside - outside) > 200  # strokes contrast with the background


def test_transparent_palette_is_composited():
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[5:15, 5:8, 3] = 255  # black opaque strokes on transparent black
    image = Image.fromarray(rgba, "RGBA").convert("P")
    image.info["transparency"] = 0
    out = decode_image(encoded(image, transparency=0), "pal.png")
    assert out.shape == (20, 20) and out.max() - out.min() > 200


@pytest.mark.parametrize("shape, fill", [((64, 64), 255), ((64, 64), 0), ((1, 1), 0), ((40, 3000), 255)])
def test_degenerate_but_valid_images_decode(shape, fill):
    out = decode_image(encoded(Image.fromarray(np.full(shape, fill, dtype=np.uint8))), "odd.png")
    assert out.shape == shape and (out == fill).all()


def test_pixel_cap_refuses_decompression_bombs():
    data = encoded(Image.new("L", (5000, 5000), 255))  # ~25 kB of PNG, 25 megapixels
    assert len(data) < 100_000
    with pytest.raises(ImageReadError, match=r"bomb\.png: 5000x5000 = 25000000 pixels exceeds the cap of 1000000"):
        decode_image(data, "bomb.png", max_pixels=1_000_000)


def test_pixel_cap_beyond_pillows_own_limit_is_our_error():
    # A PNG header declaring 200 000 x 200 000 pixels trips Pillow's own bomb check first.
    data = encoded(Image.new("1", (8, 8)))
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 200_000, 200_000, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    with pytest.raises(ImageReadError, match="huge.png: .*(cap|bomb)"):
        decode_image(patched, "huge.png")


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_files_give_the_first_frame(fmt):
    first = Image.fromarray(stroke())
    second = Image.fromarray(255 - stroke())
    data = encoded(first, fmt, save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data, f"anim.{fmt.lower()}")
    assert out[20, 8] < 60 and out[20, 30] > 200
