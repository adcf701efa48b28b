"""The ONNX format of ``hjepa export``: the model's own ``features`` traced, for any encoder and representation.

``model.onnx`` maps images ``(B, C, S, S)`` to one representation's features ``(B, D)`` with a
dynamic batch; :func:`write_onnx` traces it with PyTorch's exporter and checks it in ONNX Runtime
when that is installed. Used by :mod:`hjepa_kit.evaluation.exporting`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PluginError, UserError

__all__ = ["require_onnx", "write_onnx"]


def require_onnx() -> None:
    """A UserError naming the packages ``--format onnx`` needs when they are not installed."""
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(
            f"--format onnx needs the package{'s' if len(missing) > 1 else ''} {' and '.join(missing)}, which "
            "are not installed: pip install 'hjepa-kit[export]' (or pip install onnx onnxscript)"
        )


class _Representation(nn.Module):
    """``images (B, C, S, S) -> features (B, D)`` of one representation of an HJEPA model."""

    def __init__(self, model: nn.Module, representation: str) -> None:
        super().__init__()
        self.model = model
        self.representation = representation

    def forward(self, images: Tensor) -> Tensor:
        return self.model.features(images)[self.representation]


def write_onnx(
    model: nn.Module, representation: str, path: Path, probe: Tensor, expected: Tensor, verify: bool,
    compare: Callable[[str, Tensor, Tensor, str], dict[str, Any]],
) -> dict[str, Any]:
    """Trace ``model.features(images)[representation]`` to ``path`` (dynamic batch); ``compare`` checks it in ONNX Runtime."""
    wrapper = _Representation(model, representation).eval()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own chatter (deprecations, opset notes)
        try:
            program = torch.onnx.export(  # traced on 2 images, checked on 3: a batch baked into the graph shows
                wrapper, (probe[:2],), dynamo=True, input_names=["images"], output_names=["features"],
                dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False,
            )
            program.save(str(path))
        except Exception as exc:
            raise PluginError(
                f"ONNX export of representation {representation!r} failed (torch {torch.__version__}): "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from exc
    section: dict[str, Any] = {
        "input": {"name": "images", "shape": ["batch", *probe.shape[1:]], "dtype": "float32"},
        "output": {"name": "features", "shape": ["batch", int(expected.shape[1])], "dtype": "float32"},
        "torch_version": torch.__version__,
    }
    if verify:
        try:
            import onnxruntime
        except ImportError:
            section["verified"] = "not checked: onnxruntime is not installed"
            return section
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(["features"], {"images": probe.numpy()})[0])
        except Exception as exc:
            raise PluginError(
                f"the onnx export of {representation!r} does not run in ONNX Runtime on {probe.shape[0]} images "
                f"(traced on 2): {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from exc
        section["verified"] = compare("onnx", got, expected, representation)
    return section
