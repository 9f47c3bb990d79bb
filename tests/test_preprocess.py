import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import Normalization, mean_images
from jaxae.preprocess import to_unit_range, value_range

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _pair(n=1, mnist_value=0, cifar_value=0):
  return (np.full((n, 28, 28, 1), mnist_value, np.uint8),
          np.full((n, 32, 32, 3), cifar_value, np.uint8))


def test_white_digit_over_black_photo():
  out = np.asarray(mean_images(*_pair(mnist_value=255, cifar_value=0)))
  expected = 0.5 * ((1 - IMAGENET_MEAN) / IMAGENET_STD + (0 - 0.5) / 0.5)
  np.testing.assert_allclose(out[0, 16, 16], expected, atol=1e-6)
  np.testing.assert_allclose(out[0], np.broadcast_to(expected, (32, 32, 3)), atol=1e-6)


def test_black_photo_and_black_digit_is_the_lowest_value():
  out = np.asarray(mean_images(*_pair()))
  expected = 0.5 * ((0 - IMAGENET_MEAN) / IMAGENET_STD - 1.0)
  np.testing.assert_allclose(out[0, 5, 7], expected, atol=1e-6)
  np.testing.assert_allclose(value_range()[0], expected, atol=1e-6)


def test_mid_grey_pair():
  out = np.asarray(mean_images(*_pair(mnist_value=128, cifar_value=128)))
  g = 128 / 255
  expected = 0.5 * ((g - IMAGENET_MEAN) / IMAGENET_STD + (g - 0.5) / 0.5)
  np.testing.assert_allclose(out[0, 31, 0], expected, atol=1e-6)


def test_shapes_dtype_pairing_and_truncation():
  rng = np.random.default_rng(0)
  mnist = rng.integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
  cifar = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  out = mean_images(mnist, cifar)
  assert out.shape == (5, 32, 32, 3) and out.dtype == jnp.float32
  for i in range(5):  # Image i is digit i with photo i, and nothing else.
    np.testing.assert_allclose(out[i], mean_images(mnist[i:i + 1], cifar[i:i + 1])[0], atol=1e-6)
  assert not np.allclose(out[0], out[1])
  assert mean_images(mnist[:3], cifar).shape[0] == 3


def test_colorized_digit_has_three_equal_channels_before_normalization():
  digit = np.zeros((1, 28, 28, 1), np.uint8)
  digit[0, 10:18, 12:16] = 255
  same = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  out = np.asarray(mean_images(digit, np.zeros((1, 32, 32, 3), np.uint8),
                               mnist_normalization=same, cifar_normalization=same))
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  assert out.max() > 0.4  # 0.5 * a resized white stroke.


def test_normalization_is_configurable():
  identity = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  out = np.asarray(mean_images(*_pair(mnist_value=255, cifar_value=255),
                               mnist_normalization=identity, cifar_normalization=identity))
  np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_unit_range_map_sends_extremes_to_zero_and_one():
  low = mean_images(*_pair(mnist_value=0, cifar_value=0))
  high = mean_images(*_pair(mnist_value=255, cifar_value=255))
  np.testing.assert_allclose(to_unit_range(low), 0.0, atol=1e-6)
  np.testing.assert_allclose(to_unit_range(high), 1.0, atol=1e-6)


@pytest.mark.parametrize("mnist,cifar,which", [
    (np.zeros((2, 32, 32, 1), np.uint8), np.zeros((2, 32, 32, 3), np.uint8), "MNIST"),
    (np.zeros((2, 28, 28, 1), np.float32), np.zeros((2, 32, 32, 3), np.uint8), "MNIST"),
    (np.zeros((2, 28, 28, 1), np.uint8), np.zeros((2, 32, 32), np.uint8), "CIFAR-10"),
    (np.zeros((2, 28, 28, 1), np.uint8), np.zeros((2, 32, 32, 3), np.int32), "CIFAR-10"),
])
def test_wrong_shape_or_dtype_is_a_value_error_saying_what_was_expected(mnist, cifar, which):
  with pytest.raises(ValueError, match=rf"{which} images must be uint8 \[N, "):
    mean_images(mnist, cifar)
