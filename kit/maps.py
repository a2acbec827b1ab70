"""Small tensor helpers for feature maps and anomaly maps, shared by all methods."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def concat_layers(features: list[torch.Tensor]) -> torch.Tensor:
    """Upsample each ``[B, C_i, H_i, W_i]`` to the first map's size and concatenate: ``[B, sum C_i, H_0, W_0]``."""
    size = features[0].shape[-2:]
    resized = [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                               for f in features[1:]]
    return torch.cat(resized, dim=1)


def selected_positions_first(features: list[torch.Tensor], channel_idx: torch.Tensor) -> torch.Tensor:
    """Channels ``channel_idx`` of ``concat_layers(features)``, positions first:
    ``[H_0 * W_0, B, len(channel_idx)]``, contiguous (the layout of a matmul batched over
    positions, as PaDiM's Mahalanobis distance is).

    Same values as ``concat_layers(features)[:, channel_idx].flatten(2).permute(2, 0, 1)`` to
    float rounding, about 4x faster on CPU: only the selected channels are upsampled, by two
    small matrix products per layer (bilinear upsampling is separable) that write the
    positions-first layout directly.
    """
    h0, w0 = (int(n) for n in features[0].shape[-2:])  # ints: see _build
    b = features[0].shape[0]
    idx, order = channel_idx.sort()
    parts, start = [], 0
    for f in features:
        c = f.shape[1]
        local = idx[(idx >= start) & (idx < start + c)] - start
        start += c
        if not local.numel():
            continue
        s = f.index_select(1, local.to(f.device))  # [B, c', h, w]
        h, w = (int(n) for n in s.shape[-2:])
        if (h, w) == (h0, w0):
            parts.append(s.permute(2, 3, 0, 1).reshape(h0 * w0, b, -1))
            continue
        uh = _upsample_blur_matrix(h, h0, 0, 0.0, s.dtype, s.device)  # [H_0, h]
        uw = uh if (w, w0) == (h, h0) else _upsample_blur_matrix(w, w0, 0, 0.0, s.dtype, s.device)
        t = (s @ uw.T).permute(2, 3, 0, 1).reshape(h, -1)  # [h, W_0 * B * c']
        parts.append((uh @ t).view(h0 * w0, b, -1))
    out = torch.cat(parts, dim=-1)
    if not torch.equal(order, torch.arange(len(order), device=order.device)):  # unsorted indices
        out = out[..., order.argsort().to(out.device)]
    return out


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, h, w]`` -> ``[B, size, size]`` by bilinear interpolation."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _blur_radius(sigma: float, height: int, width: int) -> int:
    """Kernel half-width: 4 sigma, as scipy truncates, and less than the map (reflect padding)."""
    return min(max(1, int(math.ceil(4 * sigma))), width - 1, height - 1)


def _build(fn, *args):
    """``fn(*args)`` as a normal tensor even inside ``torch.inference_mode`` (PaDiM's predict):
    the cached operators below are reused by DifferNet's gradient maps, and an inference
    tensor cannot take part in autograd.

    Their sizes are passed as ints, also from a traced shape (an ONNX export), so that an
    export after one eager call finds them in the cache and records each as a constant, not
    the float64 operations that built it (ONNX Runtime has no float64 Resize)."""
    with torch.inference_mode(False), torch.no_grad():
        return fn(*args)


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, radius: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[n, n]`` matrix ``K`` with ``K @ x`` = the 1-D Gaussian blur of ``x`` (length ``n``)
    with reflect padding (``torch.nn.functional.pad(mode="reflect")``: the edge is not repeated)."""
    def build() -> torch.Tensor:
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        src = (torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None]).abs()
        src = torch.where(src > n - 1, 2 * (n - 1) - src, src)  # reflect at both ends
        k = torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, src, kernel.expand(n, -1).contiguous())
        return k.to(device=device, dtype=dtype)
    return _build(build)


@functools.lru_cache(maxsize=32)
def _upsample_blur_matrix(n_in: int, size: int, radius: int, sigma: float, dtype: torch.dtype,
                          device: torch.device) -> torch.Tensor:
    """``[size, n_in]``: 1-D linear upsampling (``align_corners=False``, as :func:`upsample`)
    followed by the blur of :func:`_blur_matrix`, as one matrix."""
    def build() -> torch.Tensor:
        eye = torch.eye(n_in, dtype=torch.float64)[None]  # [1, n_in (channels), n_in]
        up = F.interpolate(eye, size=size, mode="linear", align_corners=False)[0].T  # [size, n_in]
        if radius > 0:
            up = _blur_matrix(size, radius, sigma, torch.float64, torch.device("cpu")) @ up
        return up.to(device=device, dtype=dtype).contiguous()
    return _build(build)


# Below this side a blur is two matrix products with the dense [n, n] operators (n^3 work
# but a few BLAS calls: ~1 ms for 256 px on 2 cores); above it, where n^3 outgrows the
# banded convolution's n^2 * (8 sigma + 1), the separable convolution.
_DENSE_BLUR_MAX = 512


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``[B, H, W]`` (or ``[B, C, H, W]``) with a Gaussian of ``sigma`` pixels (reflect padding).

    Separable 1-D kernels truncated at 4 sigma, as scipy does; differentiable, so DifferNet's
    gradient maps can be blurred the same way. Maps up to 512 px are blurred as
    ``K_H @ map @ K_W^T`` with the banded blur matrices (same result to float rounding as the
    convolution, several times faster on CPU than a one-channel conv2d).
    """
    if sigma <= 0:
        return maps
    h, w = (int(n) for n in maps.shape[-2:])  # ints: see _build
    radius = _blur_radius(sigma, h, w)
    if max(h, w) <= _DENSE_BLUR_MAX and maps.dtype in (torch.float32, torch.float64):
        ky = _blur_matrix(h, radius, float(sigma), maps.dtype, maps.device)
        kx = _blur_matrix(w, radius, float(sigma), maps.dtype, maps.device)
        return ky @ maps @ kx.T
    squeeze = maps.dim() == 3
    x = maps[:, None] if squeeze else maps
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    kx = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=c)
    return x[:, 0] if squeeze else x


def upsample_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``gaussian_blur(upsample(maps, size), sigma)`` (same result to float rounding), as two
    small matrix products: ``A_h @ map @ A_w^T`` with ``A = K_blur @ U_upsample`` of shape
    ``[size, h]``. For a 64 x 64 PaDiM grid to 256 px that is ~5 M multiply-adds instead of
    an interpolation and two convolutions over the 256 x 256 map. ``[B, h, w]`` -> ``[B, size, size]``."""
    if maps.dtype not in (torch.float32, torch.float64):
        return gaussian_blur(upsample(maps, size), sigma)
    h, w, size = (int(n) for n in (*maps.shape[-2:], size))  # ints: see _build
    radius = _blur_radius(sigma, size, size) if sigma > 0 else 0
    ah = _upsample_blur_matrix(h, size, radius, float(sigma), maps.dtype, maps.device)
    aw = ah if w == h else _upsample_blur_matrix(w, size, radius, float(sigma), maps.dtype, maps.device)
    return ah @ maps @ aw.T


def mean_filter(maps: torch.Tensor, size: int = 5) -> torch.Tensor:
    """``size x size`` box mean of ``[B, H, W]`` maps, reflect padding (``size`` odd)."""
    r = size // 2
    x = F.pad(maps[:, None], (r, r, r, r), mode="reflect")
    return F.avg_pool2d(x, size, stride=1)[:, 0]


def median_filter(maps: torch.Tensor, size: int = 5) -> torch.Tensor:
    """``size x size`` median of ``[B, H, W]`` maps, reflect padding (``size`` odd).

    A selection network of elementwise minima and maxima over the ``size^2`` shifted views of
    the padded maps (:func:`median_network`): the exact middle value, as ``torch.median``
    gives it, a few times faster on CPU than sorting each window, and it exports to ONNX,
    which has no median (its TopK form was slower than PyTorch)."""
    if size % 2 == 0:
        raise ValueError(f"median filter size {size}: must be odd")
    r = size // 2
    x = F.pad(maps[:, None], (r, r, r, r), mode="reflect")[:, 0]
    # one map at a time: its few live values stay in the CPU's cache (a batch of 8 at once
    # was slower than sorting)
    return torch.cat([_median_of_windows(x[i:i + 1], size, *maps.shape[-2:])
                      for i in range(len(x))]) if len(x) else maps.clone()


def _median_of_windows(x: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """The median of the ``size x size`` windows of padded ``x [1, h + size - 1, w + size - 1]``."""
    values: dict[int, torch.Tensor] = {i * size + j: x[:, i:i + h, j:j + w]
                                       for i in range(size) for j in range(size)}
    ops, out, last_use = median_network(size * size)
    for step, (slot, kind, a, b) in enumerate(ops):
        values[slot] = (torch.minimum if kind == "min" else torch.maximum)(values[a], values[b])
        for used in (a, b):
            if last_use[used] == step:
                del values[used]  # the network's live values stay few
    return values[out].contiguous()


@functools.lru_cache(maxsize=8)
def median_network(n: int) -> tuple[tuple[tuple[int, str, int, int], ...], int, dict[int, int]]:
    """``(ops, out, last_use)``: a selection network for the median of ``n`` values (``n``
    odd), from Batcher's odd-even merge sort on ``n`` wires padded with +inf to a power of
    two, kept to the compare-exchanges the middle wire depends on (202 ops for 25 values).
    ``ops``: ``(slot, "min" | "max", a, b)`` in order, slots ``0 .. n-1`` the inputs; ``out``
    the median's slot; ``last_use``: the index of the last op reading each slot."""
    if n < 1 or n % 2 == 0:
        raise ValueError(f"median of {n} values: n must be odd")
    wires = 1
    while wires < n:
        wires *= 2
    pad = -1  # a wire still holding +inf: comparing with it exchanges nothing
    wire = list(range(n)) + [pad] * (wires - n)
    ops: list[tuple[int, str, int, int]] = []
    p = 1
    while p < wires:
        k = p
        while k >= 1:
            for j in range(k % p, wires - k, 2 * k):
                for i in range(min(k, wires - j - k)):
                    if (i + j) // (2 * p) != (i + j + k) // (2 * p):
                        continue
                    lo, hi = i + j, i + j + k  # lo takes the smaller value
                    a, b = wire[lo], wire[hi]
                    if b == pad:
                        continue
                    if a == pad:
                        wire[lo], wire[hi] = b, pad
                        continue
                    slot = n + len(ops)
                    ops += [(slot, "min", a, b), (slot + 1, "max", a, b)]
                    wire[lo], wire[hi] = slot, slot + 1
            k //= 2
        p *= 2
    out = wire[n // 2]
    needed, kept = {out}, []
    for op in reversed(ops):
        if op[0] in needed:
            kept.append(op)
            needed.update(op[2:])
    kept.reverse()
    last_use = {}
    for step, (_, _, a, b) in enumerate(kept):
        last_use[a] = last_use[b] = step
    return tuple(kept), out, last_use


def ssim_map(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of ``[B, C, H, W]`` images in [0, 1] at every
    pixel, averaged over channels: ``[B, H, W]``, 1 where the two agree. An 11 x 11 Gaussian
    window of sigma 1.5 and the paper's constants ``C1 = 0.01^2, C2 = 0.03^2``."""
    t = torch.arange(-radius, radius + 1, dtype=a.dtype, device=a.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = a.shape[1]
    kx, ky = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def smooth(x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=c)
        return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=c)

    mu_a, mu_b = smooth(a), smooth(b)
    var_a = smooth(a * a) - mu_a ** 2
    var_b = smooth(b * b) - mu_b ** 2
    cov = smooth(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(1)
