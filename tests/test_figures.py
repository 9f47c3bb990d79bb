"""The PNG figures (jaxae/report/figures.py): where the image grid puts each image."""

import numpy as np
import pytest
from PIL import Image

from jaxae.report import figures


def test_mosaic_puts_each_image_in_its_cell_centred_on_white():
  rng = np.random.default_rng(0)
  photos = rng.uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
  # Smaller and grey: centred, in all three channels.
  digits = rng.uniform(0, 1, (3, 28, 28, 1)).astype(np.float32)
  picture, centers = figures.mosaic([photos, digits], gap=4)
  assert picture.shape == (2 * 36 - 4, 3 * 36 - 4, 3)
  assert centers == [15.5, 36 + 15.5]
  for c in range(3):
    np.testing.assert_array_equal(picture[:32, 36 * c:36 * c + 32], photos[c])
    cell = picture[36:68, 36 * c:36 * c + 32]
    np.testing.assert_array_equal(cell[2:30, 2:30], np.repeat(digits[c], 3, axis=-1))
    cell[2:30, 2:30] = 1.0
    assert np.all(cell == 1.0)  # Around the smaller digit: white.
  assert np.all(picture[32:36] == 1.0) and np.all(picture[:, 32:36] == 1.0)  # The gaps.
  with pytest.raises(ValueError, match="every row needs 3 images"):
    figures.mosaic([photos, photos[:2]])


def test_image_grid_writes_a_png_marked_as_jaxae_s(tmp_path):
  rows = [("mean image", np.zeros((8, 32, 32, 3))), ("digit", np.ones((8, 32, 32, 1)))]
  figures.image_grid(rows, tmp_path / "grid.png", "Test pairs")
  with Image.open(tmp_path / "grid.png") as png:
    assert png.info.get("Software") == "jaxae"
    assert png.size == (1000, 270)  # figsize (1.1 * 8 + 1.2, 1.15 * 2 + 0.4) at 100 dpi.
