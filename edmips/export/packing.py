"""Integer weights stored at their bit-width: a layer's codes `lo + step * u`, u of b bits,
packed b bits per weight (least significant bit first) into bytes. Max-abs codes of b bits
(-(2^(b-1) - 1) .. 2^(b-1) - 1) take b bits, and so do EdMIPS's odd mid-rise codes
(-(2^b - 1) .. 2^b - 1, step 2): the bundle holds a layer's weights in params * wbits bits."""

import math

import numpy as np


def pack(codes: np.ndarray) -> tuple[np.ndarray, dict]:
    """The packed bytes of integer codes, and what unpacks them (shape, dtype, lo, step, bits)."""
    flat = codes.astype(np.int64).reshape(-1)
    lo = int(flat.min()) if flat.size else 0
    shifted = flat - lo
    step = math.gcd(*(int(v) for v in np.unique(shifted))) or 1
    u = (shifted // step).astype(np.uint64)
    bits = max(1, int(u.max()).bit_length()) if u.size else 1
    planes = ((u[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    info = {"shape": list(codes.shape), "dtype": codes.dtype.name, "lo": lo, "step": step}
    return np.packbits(planes.reshape(-1), bitorder="little"), {**info, "bits": bits}


def unpack(packed: np.ndarray, info: dict) -> np.ndarray:
    """The codes that `pack` stored, in their shape and dtype."""
    count, bits = math.prod(info["shape"]), info["bits"]
    planes = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    u = (planes.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(1)
    codes = info["lo"] + info["step"] * u
    return codes.astype(info["dtype"]).reshape(info["shape"])
