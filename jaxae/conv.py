"""Strided convolutions with PyTorch's semantics, in two formulations that compute one function.

`S(x; w)` below is PyTorch's Conv2d(k, stride s, padding p) without bias, NHWC, kernel HWIO:
    y[m] = sum_a x[s*m - p + a] @ w[a]              (per spatial axis)
and PyTorch's ConvTranspose2d with kernel K [k, k, in, out] is its adjoint in x, with the kernel's
two channel axes swapped: convT(x; K) = S^T(x; K^T) where K^T = K.transpose(0, 1, 3, 2).

- "reference": `lax.conv_general_dilated`, the ConvTranspose as a convolution of the
  stride-dilated input, differentiated by JAX. Exact by construction; used to test the other.
- "gemm" and "gemm_vjp": each of S and S^T is one matmul plus a memory pass, with hand-written
  derivatives (forward and reverse mode for "gemm", reverse mode only but faster for "gemm_vjp"):
    S(x; w)   = im2col(x) @ w                 (gather the k*k taps of each output pixel, one GEMM)
    S^T(y; w) = overlap_add(y @ w^T)          (one GEMM per input pixel, then add the k*k
                                               contributions into their output phases)
  and the gradients are again S, S^T and one GEMM: for y = S(x; w), dx = S^T(dy; w) and
  dw = im2col(x)^T @ dy; for a ConvTranspose the roles of S and S^T swap.
  Why: XLA:CPU runs the gradient of the lhs-dilated convolution (the reference ConvTranspose)
  on a slow path, and the gradients of its strided convolutions are slower than these GEMMs;
  a batch-32 training step takes about half the time (docs/speed.md).

The "gemm" path needs the large side to be exactly `stride` times the small one (k - 2p == s and,
for Conv, sides divisible by s) and k a multiple of s: true for the autoencoder's k=4, s=2, p=1
on 32x32 images; other shapes use the reference formulation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _common_dtype(layer):
  """`layer` computing in the common dtype of its input and kernel (jnp's promotion rules).

  Why: every formulation then takes the same mixed inputs (float64 images beside float32
  weights, bfloat16 beside float32) and gives the same result dtype; XLA's convolution refuses
  mixed dtypes, and the hand-written derivatives assume one. The casts sit outside them, so JAX
  returns each gradient in its own argument's dtype.
  """
  @functools.wraps(layer)
  def wrapped(x_BHWC, kernel_HWIO, stride: int, padding: int, operand_dtype=None):
    dtype = jnp.result_type(x_BHWC, kernel_HWIO)
    if operand_dtype is not None:
      operand_dtype = jnp.dtype(operand_dtype)
      if operand_dtype == dtype:  # Nothing to round.
        operand_dtype = None
    return layer(x_BHWC.astype(dtype), kernel_HWIO.astype(dtype), stride, padding, operand_dtype)
  return wrapped


def _operands(a, b, operand_dtype):
  """(a, b, the dtype to sum their products in): with an `operand_dtype` (bfloat16) both rounded
  to it and the products summed in a's own dtype (what bfloat16 GEMM units compute: AMX,
  AVX512-BF16, GPUs); without, as they are and the default sum (None)."""
  if operand_dtype is None:
    return a, b, None
  return a.astype(operand_dtype), b.astype(operand_dtype), a.dtype


def _dot(a, b, operand_dtype):
  a, b, out = _operands(a, b, operand_dtype)
  return jnp.dot(a, b, preferred_element_type=out)


def _einsum(spec, a, b, operand_dtype):
  a, b, out = _operands(a, b, operand_dtype)
  return jnp.einsum(spec, a, b, preferred_element_type=out)


@_common_dtype
def conv_reference(x_BHWC, kernel_HWIO, stride: int, padding: int, operand_dtype=None):
  """PyTorch Conv2d (no bias) through XLA's convolution."""
  p = padding
  x_BHWC, kernel_HWIO, out = _operands(x_BHWC, kernel_HWIO, operand_dtype)
  return jax.lax.conv_general_dilated(x_BHWC, kernel_HWIO, (stride, stride), ((p, p), (p, p)),
                                      dimension_numbers=_DIMENSIONS, preferred_element_type=out)


@_common_dtype
def conv_transpose_reference(x_BHWC, kernel_HWIO, stride: int, padding: int, operand_dtype=None):
  """PyTorch ConvTranspose2d as a convolution of the stride-dilated input with the flipped kernel.

  out[s*i - p + a] += x[i] * w[a]  is  conv(dilate(x, s), flip(w)) with k-1-p padding each side.
  """
  k = kernel_HWIO.shape[0]
  pad = k - 1 - padding
  x_BHWC, kernel_HWIO, out = _operands(x_BHWC, kernel_HWIO, operand_dtype)
  return jax.lax.conv_general_dilated(
      x_BHWC, kernel_HWIO[::-1, ::-1], window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      lhs_dilation=(stride, stride), dimension_numbers=_DIMENSIONS, preferred_element_type=out)


def _gemm_applies(k: int, stride: int, padding: int) -> bool:
  return k - 2 * padding == stride and k % stride == 0


# im2col gathers with a few large slices, a block of `stride` columns at a time, rather than one
# slice per tap: one slice per tap made them XLA's most numerous ops and the step slow to compile
# (same bits either way; the overlap-add keeps one slice per tap, which trains faster:
# docs/speed.md).


def _im2col(x_BHWC, k: int, stride: int, padding: int):
  """[B, H, W, C] -> [B, H/s, W/s, k*k*C]: the k x k input taps of every output pixel of S.

  Tap (a, b) of output pixel (m, l) is padded pixel (s*m + a, s*l + b); the columns are ordered
  (a, b, C). Gathered one axis at a time: along W by k/s shifts of whole blocks of s columns,
  then along H by k strided row slices.
  """
  n, h, w, c = x_BHWC.shape
  ho, wo, shifts = h // stride, w // stride, k // stride
  xp_BHWC = jnp.pad(x_BHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  blocks = xp_BHWC.reshape(n, h + 2 * padding, wo + shifts - 1, stride * c)
  rows = jnp.concatenate([blocks[:, :, d:d + wo] for d in range(shifts)], axis=-1)  # (b, C)
  return jnp.concatenate([rows[:, a:a + stride * (ho - 1) + 1:stride] for a in range(k)], axis=-1)


def _overlap_add(z_BHWKKC, stride: int, padding: int):
  """[B, h, w, k, k, C] -> [B, s*h, s*w, C]: out[s*i - p + a, s*j - p + b] += z[i, j, a, b].

  Output phase r (rows s*m + r) receives tap a from input row i = m + (r + p - a) / s whenever
  that is an integer, so each phase is a sum of shifted slices and the phases are interleaved.
  """
  n, h, w, k, _, c = z_BHWKKC.shape
  taps = {r: [(a, (r + padding - a) // stride) for a in range(k)
              if (r + padding - a) % stride == 0] for r in range(stride)}

  def shifted(z_BHWC, di, dj):  # out[m, l] = z[m + di, l + dj], zero outside.
    z_BHWC = z_BHWC[:, max(di, 0):h + min(di, 0), max(dj, 0):w + min(dj, 0)]
    return jnp.pad(z_BHWC, ((0, 0), (max(-di, 0), max(di, 0)), (max(-dj, 0), max(dj, 0)), (0, 0)))

  rows = []
  for r in range(stride):
    cols = []
    for q in range(stride):
      cols.append(sum(shifted(z_BHWKKC[:, :, :, a, b, :], di, dj)
                      for a, di in taps[r] for b, dj in taps[q]))
    rows.append(jnp.stack(cols, axis=3))  # [B, h, w, s(q), C]
  return jnp.stack(rows, axis=2).reshape(n, h * stride, w * stride, c)  # [B, h, s(r), w, s(q), C]


def _s_forward(x_BHWC, kernel_HWIO, stride, padding, op=None):
  """S(x; w) as im2col + one GEMM. [B, H, W, I] -> [B, H/s, W/s, O]. `op`: the GEMM's operand
  dtype (None: the inputs'), as in every function below."""
  return _cols_times_kernel(_im2col(x_BHWC, kernel_HWIO.shape[0], stride, padding), kernel_HWIO,
                            op)


def _cols_times_kernel(cols_BHWK, kernel_HWIO, op=None):
  """im2col columns [B, h, w, k*k*I] @ kernel [k*k*I, O]."""
  k, _, c_in, c_out = kernel_HWIO.shape
  return _dot(cols_BHWK, kernel_HWIO.reshape(k * k * c_in, c_out), op)


def _s_transpose(y_BHWC, kernel_HWIO, stride, padding, op=None):
  """S^T(y; w) as one GEMM + overlap-add. [B, h, w, O] -> [B, s*h, s*w, I]."""
  k, _, c_in, c_out = kernel_HWIO.shape
  n, h, w, _ = y_BHWC.shape
  # z[..., a, b, :] = y @ w[a, b]^T, for all taps in one GEMM: [O] x [O, k*k*I].
  w_t = kernel_HWIO.transpose(3, 0, 1, 2).reshape(c_out, k * k * c_in)
  z = _dot(y_BHWC, w_t, op).reshape(n, h, w, k, k, c_in)
  return _overlap_add(z, stride, padding)


def _s_kernel_grad(cols_BHWK, dy_BHWC, k, op=None):
  """d<S(x; w), dy>/dw = im2col(x)^T @ dy, from cols = im2col(x). Returns [k, k, I, O]."""
  grad = _einsum("bhwi,bhwo->io", cols_BHWK, dy_BHWC, op)
  return grad.reshape(k, k, cols_BHWK.shape[-1] // (k * k), dy_BHWC.shape[-1])


# Both GEMM layers are `jax.custom_jvp` functions, so forward mode (jax.jvp, jacfwd) works as well
# as reverse mode. Their tangents are linear maps that JAX transposes for reverse mode; each one is
# written as the `linear_transpose` of the backward map we want, so that the transpose JAX derives
# is that fast backward map again (JAX's own transposes of im2col and overlap-add are slow on
# CPU). Symbolic zero tangents (the input images, frozen weights) cost nothing.


def _transposed(linear_fn, like):
  """The linear map whose transpose is `linear_fn`, on inputs shaped like `like`."""
  transpose = jax.linear_transpose(linear_fn, jax.ShapeDtypeStruct(like.shape, like.dtype))
  return lambda t: transpose(t)[0]


def _tangent(parts, like):
  if not parts:
    return jnp.zeros_like(like)
  return functools.reduce(jnp.add, parts)


def _is_zero(tangent) -> bool:
  return isinstance(tangent, SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_gemm(x_BHWC, kernel_HWIO, stride, padding, op):
  return _s_forward(x_BHWC, kernel_HWIO, stride, padding, op)


def _conv_gemm_jvp(stride, padding, op, primals, tangents):
  x_BHWC, kernel_HWIO = primals
  dx, dw = tangents
  k = kernel_HWIO.shape[0]
  y = _s_forward(x_BHWC, kernel_HWIO, stride, padding, op)
  parts = []
  if not _is_zero(dx):
    # S(dx; w) = im2col(dx) @ w, with im2col written as the transpose of the overlap-add:
    # reverse mode then computes dx = S^T(dy; w) as overlap_add(dy @ w^T).
    n, h, w, _ = y.shape
    z_like = jax.ShapeDtypeStruct((n, h, w, k, k, x_BHWC.shape[-1]), x_BHWC.dtype)
    cols = _transposed(lambda z: _overlap_add(z, stride, padding), z_like)(dx)
    parts.append(_cols_times_kernel(cols.reshape(n, h, w, -1), kernel_HWIO, op))
  if not _is_zero(dw):
    # S(x; dw) = im2col(x) @ dw; rematerialized, so reverse mode keeps x rather than its k*k
    # times larger columns, and computes dw = im2col(x)^T @ dy.
    parts.append(jax.checkpoint(lambda x, dw: _s_forward(x, dw, stride, padding, op))(x_BHWC, dw))
  return y, _tangent(parts, y)


_conv_gemm.defjvp(_conv_gemm_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_transpose_gemm(x_BHWC, kernel_HWIO, stride, padding, op):
  return _s_transpose(x_BHWC, kernel_HWIO.transpose(0, 1, 3, 2), stride, padding, op)


def _conv_transpose_gemm_jvp(stride, padding, op, primals, tangents):
  x_BHWC, kernel_HWIO = primals
  dx, dw = tangents
  k = kernel_HWIO.shape[0]
  y = _s_transpose(x_BHWC, kernel_HWIO.transpose(0, 1, 3, 2), stride, padding, op)
  parts = []
  if not _is_zero(dx):
    # S^T(dx; K^T), whose transpose is dx = im2col(dy) @ K^T.
    parts.append(_transposed(lambda dy: _cols_times_kernel(
        _im2col(dy, k, stride, padding), kernel_HWIO.transpose(0, 1, 3, 2), op), y)(dx))
  if not _is_zero(dw):
    # S^T(x; dK^T), whose transpose is dK = (im2col(dy)^T @ x)^T.
    def kernel_tangent(x, dw):
      return _transposed(lambda dy: _s_kernel_grad(_im2col(dy, k, stride, padding), x, k, op)
                         .transpose(0, 1, 3, 2), y)(dw)
    parts.append(jax.checkpoint(kernel_tangent)(x_BHWC, dw))
  return y, _tangent(parts, y)


_conv_transpose_gemm.defjvp(_conv_transpose_gemm_jvp, symbolic_zeros=True)


# The same layers with reverse-mode-only derivatives (`jax.custom_vjp`): no forward mode, but
# the fastest training on CPU (docs/speed.md). The experiment scripts, which only take gradients,
# use these.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_gemm_vjp(x_BHWC, kernel_HWIO, stride, padding, op):
  return _s_forward(x_BHWC, kernel_HWIO, stride, padding, op)


def _conv_gemm_vjp_fwd(x_BHWC, kernel_HWIO, stride, padding, op):
  # Keeps x, not its k*k times larger im2col columns; the backward pass gathers them again.
  return _s_forward(x_BHWC, kernel_HWIO, stride, padding, op), (x_BHWC, kernel_HWIO)


def _conv_gemm_vjp_bwd(stride, padding, op, residuals, dy_BHWC):
  x_BHWC, kernel_HWIO = residuals
  k = kernel_HWIO.shape[0]
  dx = _s_transpose(dy_BHWC, kernel_HWIO, stride, padding, op)
  dw = _s_kernel_grad(_im2col(x_BHWC, k, stride, padding), dy_BHWC, k, op)
  return dx, dw


_conv_gemm_vjp.defvjp(_conv_gemm_vjp_fwd, _conv_gemm_vjp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose_gemm_vjp(x_BHWC, kernel_HWIO, stride, padding, op):
  return _s_transpose(x_BHWC, kernel_HWIO.transpose(0, 1, 3, 2), stride, padding, op)


def _conv_transpose_gemm_vjp_fwd(x_BHWC, kernel_HWIO, stride, padding, op):
  y = _s_transpose(x_BHWC, kernel_HWIO.transpose(0, 1, 3, 2), stride, padding, op)
  return y, (x_BHWC, kernel_HWIO)


def _conv_transpose_gemm_vjp_bwd(stride, padding, op, residuals, dy_BHWC):
  x_BHWC, kernel_HWIO = residuals
  k = kernel_HWIO.shape[0]
  cols = _im2col(dy_BHWC, k, stride, padding)  # Shared by both gradients.
  dx = _cols_times_kernel(cols, kernel_HWIO.transpose(0, 1, 3, 2), op)
  dw = _s_kernel_grad(cols, x_BHWC, k, op).transpose(0, 1, 3, 2)
  return dx, dw


_conv_transpose_gemm_vjp.defvjp(_conv_transpose_gemm_vjp_fwd, _conv_transpose_gemm_vjp_bwd)


def _conv_or_reference(gemm_conv):
  """PyTorch Conv2d (no bias) by `gemm_conv` where it applies, else by the reference."""
  @_common_dtype
  def conv(x_BHWC, kernel_HWIO, stride: int, padding: int, operand_dtype=None):
    _, h, w, _ = x_BHWC.shape
    if not _gemm_applies(kernel_HWIO.shape[0], stride, padding) or h % stride or w % stride:
      return conv_reference(x_BHWC, kernel_HWIO, stride, padding, operand_dtype)
    return gemm_conv(x_BHWC, kernel_HWIO, stride, padding, operand_dtype)
  return conv


def _conv_transpose_or_reference(gemm_conv_transpose):
  """PyTorch ConvTranspose2d (no bias) by `gemm_conv_transpose` where it applies."""
  @_common_dtype
  def conv_transpose(x_BHWC, kernel_HWIO, stride: int, padding: int, operand_dtype=None):
    if not _gemm_applies(kernel_HWIO.shape[0], stride, padding):
      return conv_transpose_reference(x_BHWC, kernel_HWIO, stride, padding, operand_dtype)
    return gemm_conv_transpose(x_BHWC, kernel_HWIO, stride, padding, operand_dtype)
  return conv_transpose


# im2col + GEMM and GEMM + overlap-add, differentiable in both modes by GEMMs.
conv_gemm = _conv_or_reference(_conv_gemm)
conv_transpose_gemm = _conv_transpose_or_reference(_conv_transpose_gemm)
# The same with reverse-mode-only derivatives: faster to train, no jax.jvp.
conv_gemm_vjp = _conv_or_reference(_conv_gemm_vjp)
conv_transpose_gemm_vjp = _conv_transpose_or_reference(_conv_transpose_gemm_vjp)


# name -> (conv, conv_transpose); each takes (x_BHWC, kernel_HWIO, stride, padding,
# operand_dtype=None), the last rounding every GEMM's operands (Config.gemm_dtype). All compute
# the same function; "gemm" supports every JAX transformation, "gemm_vjp" trains fastest on CPU
# but has no forward mode, "reference" is XLA's. Config.conv_impl="auto" picks one per platform
# (jaxae/platforms.py).
CONV_IMPLS = {
    "gemm": (conv_gemm, conv_transpose_gemm),
    "gemm_vjp": (conv_gemm_vjp, conv_transpose_gemm_vjp),
    "reference": (conv_reference, conv_transpose_reference),
}
