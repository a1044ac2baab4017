"""Run an exported traced-graph model and compare it with the fake-quantized network."""

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn


def run_qdq(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Logits of the QDQ model under plain onnxruntime (images in [0, 1], NCHW float32)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images.astype(np.float32)})[0]


@torch.no_grad()
def onnx_check(model: nn.Module, qdq_path: Path, loader, max_images: int | None = None) -> dict:
    """Accuracy of the fake-quantized network and of the QDQ model in onnxruntime, and how
    often they predict the same class (on the first max_images test images; None: all)."""
    reference = copy.deepcopy(model).cpu().float().eval()
    correct_ref = correct_onnx = agree = total = 0
    for x, y in loader:
        if max_images is not None:
            x, y = x[: max_images - total], y[: max_images - total]
        x, y = x.cpu().float(), y.cpu()
        pred_ref = reference(x).argmax(1)
        pred_onnx = torch.from_numpy(run_qdq(qdq_path, x.numpy())).argmax(1)
        correct_ref += int((pred_ref == y).sum())
        correct_onnx += int((pred_onnx == y).sum())
        agree += int((pred_ref == pred_onnx).sum())
        total += len(y)
        if total == max_images:
            break
    return {
        "test_acc": correct_ref / total,
        "test_acc_integer": correct_onnx / total,
        "prediction_agreement": agree / total,
        "test_images": total,
    }
