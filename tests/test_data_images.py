"""Every PIL mode (and array layout) becomes RGB uint8, transparency composited on white."""

import numpy as np
import pytest
from PIL import Image

from ugatit_jax.data.images import array_to_rgb, pil_to_rgb, read_rgb


def _rgba():
    pixels = np.zeros((2, 3, 4), np.uint8)
    pixels[0, 0] = (10, 20, 30, 255)  # opaque: kept
    pixels[0, 1] = (10, 20, 30, 0)  # transparent: white
    pixels[0, 2] = (0, 0, 0, 128)  # half: mid grey
    return pixels


def test_rgba_is_composited_on_white():
    out = pil_to_rgb(Image.fromarray(_rgba()))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("L", (2, 2), 77), (77, 77, 77)),
        (lambda: Image.new("1", (2, 2), 1), (255, 255, 255)),
        (lambda: Image.new("LA", (2, 2), (0, 0)), (255, 255, 255)),
        (lambda: Image.new("CMYK", (2, 2), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.fromarray(np.full((2, 2), 65535, np.uint16)), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((2, 2), 257 * 40, np.uint16)), (40, 40, 40)),
        (lambda: Image.new("F", (2, 2), 0.5), (128, 128, 128)),
    ],
)
def test_modes(make, expected):
    out = pil_to_rgb(make())
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == expected


def test_palette_with_transparency_round_trips_through_png(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([200, 0, 0] + [0, 0, 0] * 255)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    out = read_rgb(str(path))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


def test_array_layouts():
    grey = np.full((2, 2), 9, np.uint8)
    assert array_to_rgb(grey).shape == (2, 2, 3)
    assert array_to_rgb(grey[..., None]).shape == (2, 2, 3)
    assert tuple(array_to_rgb(_rgba())[0, 1]) == (255, 255, 255)
    assert tuple(array_to_rgb(np.full((1, 1), 65535, np.uint16))[0, 0]) == (255, 255, 255)
    with pytest.raises(TypeError, match="shape"):
        array_to_rgb(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(TypeError, match="float32"):
        array_to_rgb(np.zeros((2, 2, 3), np.float32))


def test_truncated_file_fails_at_read(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(OSError):
        read_rgb(str(path))
