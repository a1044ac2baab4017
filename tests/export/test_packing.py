"""The bundle stores weights at their bit-width: a layer's weights take params * wbits bits
at most (max-abs narrow-range codes and EdMIPS's odd mid-rise codes alike), and load back to
the same integers in the same dtype."""

import math

import numpy as np
import pytest
from test_traced_export import trained_like

from edmips.export import load_bundle, lower, save_bundle
from edmips.export.packing import pack, unpack
from edmips.nn.layers import QuantConv2d, QuantLinear


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_codes_take_their_bits_and_unpack_to_themselves(bits):
    rng = np.random.default_rng(bits)
    top = 2 ** (bits - 1) - 1
    narrow = rng.integers(-top, top + 1, (7, 5, 3, 3)).astype(np.int8)
    narrow.flat[:2] = [-top, top]
    odd = (2 * rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (33, 3)) + 1).astype(np.int16)
    odd.flat[:2] = [-(2**bits - 1), 2**bits - 1]
    for codes in (narrow, odd):
        packed, info = pack(codes)
        assert info["bits"] == bits and packed.nbytes == math.ceil(codes.size * bits / 8)
        back = unpack(packed, info)
        assert back.dtype == codes.dtype and np.array_equal(back, codes)


def test_a_bundle_s_weights_take_the_architecture_s_bits_and_load_back(tmp_path):
    model = trained_like("tv_mobilenet_v2", 32)  # mixed bit-widths, edmips's odd codes
    graph = lower(model, (3, 32, 32))
    save_bundle(graph, tmp_path / "integer")
    loaded = load_bundle(tmp_path / "integer")
    stored = np.load(tmp_path / "integer" / "arrays.npz")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    packed_bits, architecture_bits = 0, 0
    for node, back in zip(graph.nodes, loaded.nodes):
        for key, array in node.arrays.items():
            assert back.arrays[key].dtype == array.dtype and np.array_equal(back.arrays[key], array)
        if node.op in ("conv", "linear"):
            layer = layers[node.name]
            assert stored[f"{node.name}/weight"].nbytes <= math.ceil(
                layer.weight.numel() * layer.wbits / 8
            )
            packed_bits += stored[f"{node.name}/weight"].nbytes * 8
            architecture_bits += layer.weight.numel() * layer.wbits
    assert packed_bits < architecture_bits + 8 * len(layers)  # at most a byte's rounding each
