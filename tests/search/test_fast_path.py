"""The fast path (bf16 autocast, channels_last) computes what the plain path computes."""

import torch

from edmips.cost import layers as cost_layers
from edmips.models import create_model
from edmips.nn import default_searched, to_search


def _search_net(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10)
    to_search(model, default_searched(model), (1, 2, 3, 4), (2, 3, 4))
    layers = cost_layers.searched(model, cost_layers.measure(model, (3, 32, 32)))
    return model.eval(), layers


def test_channels_last_matches_the_plain_layout():
    model, _ = _search_net()
    x = torch.rand(8, 3, 32, 32)
    plain = model(x)
    fast = model.to(memory_format=torch.channels_last)(
        x.contiguous(memory_format=torch.channels_last)
    )
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_stays_close_to_float32_in_value_and_selector_gradient():
    model, layers = _search_net()
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))

    def step(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        grads = torch.cat([m.alpha_a.grad for _, m in layers] + [m.alpha_w.grad for _, m in layers])
        return logits.float().detach(), grads

    plain_logits, plain_grads = step(False)
    fast_logits, fast_grads = step(True)
    rel = (fast_logits - plain_logits).norm() / plain_logits.norm()
    assert rel < 0.1
    cos = torch.nn.functional.cosine_similarity(fast_grads, plain_grads, dim=0)
    assert cos > 0.9
