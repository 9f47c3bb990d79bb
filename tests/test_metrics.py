import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import jaxae
from jaxae import mean_images, psnr, ssim
from jaxae.preprocess import to_unit_range


def _cases():
  rng = np.random.default_rng(0)
  noise_a = rng.uniform(-2.0, 2.5, (6, 32, 32, 3)).astype(np.float32)
  noise_b = (noise_a + rng.normal(0, 0.4, noise_a.shape)).astype(np.float32)
  # Structured: real-looking mean images (a stroke over gradients) and a blurred, shifted copy.
  digits = np.zeros((6, 28, 28, 1), np.uint8)
  for i in range(6):
    digits[i, 4 + i:20 + i, 10:14] = 255
  yy, xx = np.mgrid[0:32, 0:32]
  photos = np.stack([np.stack([(xx * 8 + i * 20) % 256, (yy * 8) % 256, (xx + yy) * 4 % 256], -1)
                     for i in range(6)]).astype(np.uint8)
  structured_a = np.asarray(mean_images(digits, photos))
  structured_b = 0.8 * np.roll(structured_a, 1, axis=2) + 0.1
  return [(noise_a, noise_b), (structured_a, structured_b.astype(np.float32))]


@pytest.mark.parametrize("case", [0, 1])
def test_original_convention_matches_scikit_image(case):
  a, b = _cases()[case]
  expected_ssim = [structural_similarity(x.astype(np.float64), y.astype(np.float64),
                                         channel_axis=-1, data_range=2) for x, y in zip(a, b)]
  expected_psnr = [peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64),
                                           data_range=x.max() - x.min()) for x, y in zip(a, b)]
  np.testing.assert_allclose(ssim(a, b, "original"), expected_ssim, atol=1e-4)
  np.testing.assert_allclose(psnr(a, b, "original"), expected_psnr, atol=1e-4)


@pytest.mark.parametrize("case", [0, 1])
def test_standard_convention_matches_scikit_image_gaussian_ssim(case):
  a, b = _cases()[case]
  ua = np.asarray(to_unit_range(a), np.float64)
  ub = np.asarray(to_unit_range(b), np.float64)
  expected_ssim = [structural_similarity(x, y, channel_axis=-1, data_range=1,
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False) for x, y in zip(ua, ub)]
  expected_psnr = [peak_signal_noise_ratio(x, y, data_range=1) for x, y in zip(ua, ub)]
  np.testing.assert_allclose(ssim(a, b), expected_ssim, atol=1e-4)
  np.testing.assert_allclose(psnr(a, b), expected_psnr, atol=1e-4)


def test_identical_images_are_perfect_and_conventions_differ():
  a, b = _cases()[1]
  np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-5)
  np.testing.assert_allclose(ssim(a, a, "original"), 1.0, atol=1e-5)
  assert np.all(np.abs(np.asarray(ssim(a, b)) - np.asarray(ssim(a, b, "original"))) > 1e-3)


def test_bad_arguments():
  a = np.zeros((2, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match="convention"):
    ssim(a, a, "pytorch")
  with pytest.raises(ValueError, match="one shape"):
    psnr(a, a[:1])


@pytest.mark.parametrize("fn", [ssim, psnr])
def test_integer_or_unnormalized_images_are_refused(fn):
  """uint8 0-255 images once scored unrelated images SSIM 0.5-0.7 and PSNR 25 dB."""
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(2))
  with pytest.raises(ValueError, match="normalized float images.*got uint8"):
    fn(a, b)
  with pytest.raises(ValueError, match=r"originals lie in \[0, 255\]"):
    fn(a.astype(np.float32), b.astype(np.float32))


@pytest.mark.parametrize("convention,window", [("standard", 11), ("original", 7)])
def test_images_smaller_than_the_ssim_window_are_refused(convention, window):
  small = np.zeros((2, window - 1, window - 1, 3), np.float32)
  with pytest.raises(ValueError, match=f"at least {window}x{window}"):
    ssim(small, small, convention)
  ok = np.zeros((1, window, window, 3), np.float32)
  assert ssim(ok, ok, convention).shape == (1,)


@pytest.mark.parametrize("fn,unit", [(ssim, jaxae.unit_ssim), (psnr, jaxae.unit_psnr)])
def test_grey_images_are_refused_by_the_mean_image_metrics_and_scored_by_the_unit_ones(fn, unit):
  """A grey digit in [0, 1] once read 50 dB through the mean-image PSNR, where its PSNR is 40."""
  rng = np.random.default_rng(0)
  digits = rng.uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
  noisy = np.clip(digits + rng.normal(0, 0.01, digits.shape), 0, 1).astype(np.float32)
  with pytest.raises(ValueError, match=r"normalized RGB images \[N, H, W, 3\].*got 1 channel"
                                       rf".*jaxae.unit_{fn.__name__}"):
    fn(digits, noisy)
  expected = ([peak_signal_noise_ratio(t, e, data_range=1) for t, e in zip(digits, noisy)]
              if fn is psnr else [structural_similarity(t, e, channel_axis=-1, data_range=1,
                                                        gaussian_weights=True, sigma=1.5,
                                                        use_sample_covariance=False)
                                  for t, e in zip(digits, noisy)])
  np.testing.assert_allclose(unit(digits, noisy), expected, rtol=1e-3)
