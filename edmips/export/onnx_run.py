"""Run the QDQ ONNX model of a converted network under plain onnxruntime."""

from pathlib import Path

import numpy as np
import torch


def run_qdq(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Logits of the QDQ model under plain onnxruntime (images in [0, 1], NCHW float32)."""
    return qdq_runtime(path)(torch.from_numpy(images)).numpy()


def qdq_runtime(path: str | Path):
    """The QDQ model under plain onnxruntime as a function of a batch of images (a tensor)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.float().numpy()})[0])
