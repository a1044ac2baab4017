"""Pre-activation ResNets as in EdMIPS, built so that every tensor between layers is quantized.

Each block applies batch norm and then lets every conv quantize its own input with HWGQ (the
activation quantizer before each conv). The residual stream is quantized too: one signed
8-bit StreamQuant per stage is shared by the branch output, the shortcut and their sum, so
residual adds happen on one integer grid (the micronet recipe). The image enters as 8-bit
codes with the normalization folded in; the first conv and the classifier have 8-bit weights.
Global average pooling makes any input size work.
"""

from torch import Tensor, nn

from edmips.models.registry import register_model
from edmips.models.weights import load_weights
from edmips.nn.convert import FIXED_BITS
from edmips.nn.layers import QuantConv2d, QuantLinear
from edmips.quant import HWGQ, InputQuant, StreamQuant


def conv(cin, cout, k, stride=1, **bits) -> QuantConv2d:
    return QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, **bits)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv1 = conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3)
        self.convs = ("conv1", "conv2")
        _add_downsample(self, cin, planes, stride)

    def forward(self, x: Tensor, quant: StreamQuant) -> Tensor:
        h = self.bn0(x)
        y = self.conv2(self.bn1(self.conv1(h)))
        return _join(self, x, h, y, quant)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv1 = conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(planes, planes * 4, 1)
        self.convs = ("conv1", "conv2", "conv3")
        _add_downsample(self, cin, planes * 4, stride)

    def forward(self, x: Tensor, quant: StreamQuant) -> Tensor:
        h = self.bn0(x)
        y = self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(h)))))
        return _join(self, x, h, y, quant)


def _add_downsample(block: nn.Module, cin: int, cout: int, stride: int) -> None:
    block.downsample = block.downsample_bn = None
    if stride != 1 or cin != cout:
        block.downsample = conv(cin, cout, 1, stride)
        block.downsample_bn = nn.BatchNorm2d(cout)


def _join(block, x: Tensor, h: Tensor, y: Tensor, quant: StreamQuant) -> Tensor:
    # The downsample runs after the branch, as in EdMIPS: this fixes the layer order.
    shortcut = x if block.downsample is None else quant(block.downsample_bn(block.downsample(h)))
    return quant(quant(y) + shortcut)


class Stage(nn.Module):
    """Blocks sharing one residual-stream quantizer; the input is requantized onto it."""

    def __init__(self, block, cin: int, planes: int, depth: int, stride: int):
        super().__init__()
        self.quant = StreamQuant(FIXED_BITS)
        for i in range(depth):
            self.add_module(str(i), block(cin, planes, stride if i == 0 else 1))
            cin = planes * block.expansion

    def blocks(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if name != "quant"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.quant(x)
        for block in self.blocks():
            x = block(x, self.quant)
        return x


class PreActResNet(nn.Module):
    def __init__(
        self,
        block,
        depths,
        widths,
        num_classes=1000,
        imagenet_stem=True,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ):
        super().__init__()
        self.input_quant = InputQuant(mean, std)
        k, stride = (7, 2) if imagenet_stem else (3, 1)
        self.conv1 = conv(3, widths[0], k, stride, wbits=FIXED_BITS, abits=None, aquant="image")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = HWGQ(FIXED_BITS)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet_stem else nn.Identity()
        cin = widths[0]
        self.stages = nn.ModuleList()
        for i, (depth, planes) in enumerate(zip(depths, widths)):
            self.stages.append(Stage(block, cin, planes, depth, 1 if i == 0 else 2))
            cin = planes * block.expansion
        self.bn_final = nn.BatchNorm2d(cin)
        self.fc = QuantLinear(
            cin, num_classes, wbits=FIXED_BITS, abits=FIXED_BITS, per_channel=False, pool_input=True
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(self.input_quant(x)))))
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.bn_final(x))


def _build(block, depths, widths, weights: str | None = None, **kw) -> PreActResNet:
    """The network; `weights`: a local state-dict file of it (models/weights.py), float-trained
    or not: the quantizers' entries (the image's zero point, the residual streams' ranges) are
    optional, as a float-trained copy of the network has none."""
    model = PreActResNet(block, depths, widths, **kw)
    if weights is not None:
        layers = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
        float_entries = {
            f"{name}.{k}"
            for name, m in model.named_modules()
            if isinstance(m, layers)
            for k in m.state_dict()
        }
        quantizers = [k for k in model.state_dict() if k not in float_entries]
        load_weights(model, weights, optional=quantizers)
    return model


@register_model
def resnet18(**kw) -> PreActResNet:
    return _build(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), **kw)


@register_model
def resnet50(**kw) -> PreActResNet:
    return _build(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), **kw)


@register_model
def resnet20(**kw) -> PreActResNet:
    return _build(BasicBlock, (3, 3, 3), (16, 32, 64), imagenet_stem=False, **kw)


@register_model
def resnet8(**kw) -> PreActResNet:
    """ResNet-20's shape with one block per stage: the quick demo and test network."""
    return _build(BasicBlock, (1, 1, 1), (16, 32, 64), imagenet_stem=False, **kw)


@register_model
def resnet_tiny(**kw) -> PreActResNet:
    """Two narrow stages, for unit tests that run in a second."""
    return _build(BasicBlock, (1, 1), (8, 16), imagenet_stem=False, **kw)
