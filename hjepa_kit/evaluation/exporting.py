"""Export a checkpoint's target encoder for use without hjepa-kit: timm weights and/or ONNX.

An export folder holds::

    config.json         what the export is: architecture, representation and pooling, preprocessing,
                        the exact timm call, and how well the export reproduced hjepa-kit's features
    model.safetensors   (format timm) the target encoder as a timm VisionTransformer's state dict
    model.onnx          (format onnx) images (B, C, S, S) -> features (B, D), dynamic batch

The timm format is a contract between the core and the encoder plugin: an encoder that can be
loaded by plain timm offers ``export_timm()`` returning a :class:`~hjepa_kit.contracts.TimmExport` (architecture,
model arguments, state dict). The core writes and checks it; it knows no encoder. The ONNX format
traces the model's own ``features`` and so works for any encoder and any representation.

The representation exported is by default the run's evaluated one (``evaluation.representation``,
what training and ``hjepa evaluate`` graded). timm holds only ``encoder``: a level is the
predictor's own pooling (the hierarchical predictor layer-normalises the final tokens a second
time, without affine parameters, before max-pooling), and a timm ``VisionTransformer`` applies one
norm per token before its global pool and ``fc_norm`` only after it, so no configuration of it
computes a level exactly; such a request is refused, naming ``--format onnx`` and ``hjepa embed``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from .. import __version__
from ..contracts import TimmExport
from ..errors import PluginError, UserError
from .onnx_export import require_onnx, write_onnx
from .outputs import atomic_folder, check_new_folder
from .pretrained import Pretrained, load_pretrained

__all__ = [
    "EXPORT_FORMAT", "FORMATS", "TOLERANCE", "TimmExport", "ExportResult", "export_checkpoint", "load_export_config",
    "timm_call",
]

log = logging.getLogger("hjepa_kit")

#: Written into every export's config.json; ``--force`` replaces only folders that carry it.
EXPORT_FORMAT = "hjepa-kit-export/1"

#: Export formats: ``timm`` (model.safetensors) and ``onnx`` (model.onnx).
FORMATS: tuple[str, ...] = ("timm", "onnx")

#: Largest absolute difference allowed between the exported model's features and hjepa-kit's own
#: (float32, on the CPU) before an export is refused as wrong. Measured differences are ~1e-6.
TOLERANCE = 1e-4

_FILES = {"timm": "model.safetensors", "onnx": "model.onnx"}


@attrs.frozen
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    Attributes:
        folder: the export folder.
        files: format (``timm``, ``onnx``, ``config``) -> written file.
        config: the contents of ``config.json``.
    """

    folder: Path
    files: Mapping[str, Path]
    config: Mapping[str, Any]


def timm_call(config: Mapping[str, Any], folder: str = "export") -> str:
    """The Python lines that load an export with plain timm, for ``config.json`` and the docs."""
    timm_cfg = config["timm"]
    args = ", ".join(f"{k}={v!r}" for k, v in timm_cfg["model_args"].items())
    # timm's pretrained configs hold tuples (JSON gave lists)
    overlay = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in timm_cfg["pretrained_cfg_overlay"].items())
    return (
        f'timm.create_model({timm_cfg["architecture"]!r}, pretrained=True, '
        f'pretrained_cfg_overlay=dict(file="{folder}/{_FILES["timm"]}", {overlay}), {args})'
    )


def load_export_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.json`` of an export folder, or None when ``folder`` holds no hjepa-kit export."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("format") == EXPORT_FORMAT else None


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("timm",),
    representation: str | None = None,
    force: bool = False,
    verify: bool = True,
    plugins: Iterable[Any] = (),
) -> ExportResult:
    """Export a checkpoint's target encoder for use without hjepa-kit.

    This is the library's ``hjepa_kit.export`` and the command ``hjepa export``.

    The folder ``out`` receives ``config.json`` (architecture, representation and pooling,
    preprocessing, the exact timm call, the check's result) and, per format, ``model.safetensors``
    (``timm``: loadable by plain ``timm.create_model``) or ``model.onnx`` (``onnx``: images
    ``(B, C, S, S)`` -> features ``(B, D)``, dynamic batch). See the "Use your encoder" page.

    Args:
        checkpoint: a checkpoint written by :func:`~hjepa_kit.api.train`.
        out: the export folder; it must not exist unless ``force``.
        formats: ``timm`` and/or ``onnx``. ONNX needs the ``onnx`` and ``onnxscript`` packages
            (``pip install 'hjepa-kit[export]'``).
        representation: what the exported model returns; ``None`` (default): the run's evaluated
            representation, ``evaluation.representation`` in the checkpoint, i.e. what its
            evaluation graded. ``encoder`` (the target encoder's final tokens, averaged; the only
            one timm can hold) or, for ONNX only, a hierarchy level (``level0``, ``level1`` ...).
            A timm export of a run that evaluated a level therefore needs ``"encoder"`` explicitly.
        force: replace ``out`` when it holds an earlier export (never another folder).
        verify: load each export back (timm; ONNX with onnxruntime when installed) and require its
            features on a probe batch to match hjepa-kit's within
            :data:`~hjepa_kit.evaluation.exporting.TOLERANCE`.
        plugins: extra plugins whose components the checkpoint's configuration names.

    Returns:
        An :class:`~hjepa_kit.evaluation.exporting.ExportResult`: the folder, the written files, the config.

    Raises:
        hjepa_kit.errors.UserError: the checkpoint is not ours, the format or representation is
            unknown or not exportable in that format, ``out`` exists or cannot be written. Nothing
            is left under ``out`` when it fails.
    """
    formats = _check_formats(formats)
    out = Path(out)
    check_new_folder(out, force=force, replaceable=_is_export)
    pretrained = load_pretrained(checkpoint, device="cpu", plugins=plugins)
    asked, representation = representation, pretrained.choose_representation(representation)  # None: the evaluated one
    if "timm" in formats and representation != "encoder":
        raise UserError(_timm_cannot_hold(representation, defaulted=asked is None))
    timm_spec = _timm_spec(pretrained) if "timm" in formats else None
    if "onnx" in formats:
        require_onnx()
    model = pretrained.model
    files: dict[str, Path] = {}
    config = _config(pretrained, formats, representation)
    with atomic_folder(out, force=force, replaceable=_is_export) as tmp:
        probe = _probe_images(pretrained)
        expected = model.features(probe)[representation]
        config["feature_dim"] = int(expected.shape[1])
        if timm_spec is not None:
            config["timm"] = _write_timm(timm_spec, pretrained, tmp / _FILES["timm"], probe, expected, verify)
            files["timm"] = out / _FILES["timm"]
        if "onnx" in formats:
            config["onnx"] = write_onnx(model, representation, tmp / _FILES["onnx"], probe, expected, verify, _compare)
            files["onnx"] = out / _FILES["onnx"]
        if timm_spec is not None:
            config["usage"] = {"timm": f"import timm\nmodel = {timm_call(config, str(out))}\nmodel.eval()"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        files["config"] = out / "config.json"
    log.info("exported %s (%s) to %s", pretrained.path, ", ".join(formats), out)
    return ExportResult(folder=out, files=files, config=config)


def _timm_cannot_hold(representation: str, *, defaulted: bool) -> str:
    """Why the timm format refuses ``representation`` and what to do instead (``defaulted``: it was not asked for)."""
    asked = (f"--representation defaults to the run's evaluated representation {representation!r} (evaluation.representation, "
             "what its evaluation graded), and" if defaulted else f"--representation {representation!r}:")
    return (
        f"{asked} the timm format holds the encoder alone, whose timm pooling gives only the 'encoder' representation "
        f"(the mean of its final normed tokens); {representation} is the predictor's own pooling of those tokens (hierarchical: "
        "a second layer norm per token, then its feature_pool, a maximum by default), which no timm VisionTransformer configuration computes. Export "
        f"{representation} exactly with --format onnx, or compute it with `hjepa embed{'' if defaulted else ' --representation ' + representation}`"
        + ("; or pass --representation encoder explicitly for timm weights of the mean-pooled encoder (not what was graded)"
           if defaulted else "")
    )


def _check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [formats]
    chosen: list[str] = []
    for item in formats:
        for name in (n for n in str(item).split(",") if n):
            if name not in FORMATS:
                raise UserError(f"--format {name!r}: unknown export format; allowed: {', '.join(FORMATS)}")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise UserError(f"--format: choose at least one of {', '.join(FORMATS)}")
    return tuple(chosen)


def _is_export(folder: Path) -> bool:
    return load_export_config(folder) is not None


def _timm_spec(pretrained: Pretrained) -> TimmExport:
    encoder = pretrained.model.target_encoder
    component, _ = pretrained.resolved["model.encoder"]
    exporter: Callable[[], Any] | None = getattr(encoder, "export_timm", None)
    if not callable(exporter):
        raise UserError(
            f"encoder '{pretrained.encoder_name}' from plugin {component.origin} cannot be exported for timm: it offers no "
            "export_timm() (see hjepa_kit.contracts.TimmExport); use --format onnx, or `hjepa embed` for features"
        )
    spec = exporter()
    if not isinstance(spec, TimmExport):
        raise PluginError(
            f"encoder '{pretrained.encoder_name}' from plugin {component.origin}: export_timm() returned "
            f"{type(spec).__name__}, expected hjepa_kit.contracts.TimmExport"
        )
    return spec


def _preprocessing(pretrained: Pretrained) -> dict[str, Any]:
    size = int(pretrained.ctx.image_size)
    return {
        "input_size": [int(pretrained.ctx.in_chans), size, size],
        "resize": f"shorter side to {size} pixels, bilinear, then a centre crop of {size}x{size}",
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "scale": "pixel values / 255, then (x - mean) / std per channel",
        "mean": list(pretrained.mean),
        "std": list(pretrained.std),
    }


def _config(pretrained: Pretrained, formats: Sequence[str], representation: str) -> dict[str, Any]:
    ctx, state = pretrained.ctx, pretrained.state
    component, _ = pretrained.resolved["model.encoder"]
    pooling = (
        "mean over the patch grid of the target encoder's final (layer-normed) tokens; no class token"
        if representation == "encoder"
        else f"hierarchy level {representation[5:]} of predictor '{pretrained.config.model.predictor.name}': "
        "its own pooling of the target encoder's block outputs (see the predictor's level_features)"
    )
    return {
        "format": EXPORT_FORMAT,
        "hjepa_kit_version": __version__,
        "formats": list(formats),
        "files": {name: _FILES[name] for name in formats},
        "source": {
            "checkpoint": str(pretrained.path),
            "run": pretrained.config.name,
            "step": int(state.get("step", 0)),
            "epoch": int(state.get("epoch", 0)),
            "encoder": "target (EMA) encoder",
        },
        "encoder": {
            "name": pretrained.encoder_name,
            "plugin": component.origin,
            "image_size": int(ctx.image_size),
            "in_chans": int(ctx.in_chans),
            "patch_size": int(ctx.patch_size or 0),
            "grid_size": list(ctx.grid_size or ()),
            "embed_dim": int(ctx.embed_dim or 0),
            "depth": int(ctx.depth or 0),
        },
        "representation": representation,
        "pooling": pooling,
        "evaluation_representation": pretrained.config.evaluation.representation,
        "preprocessing": _preprocessing(pretrained),
    }


def _probe_images(pretrained: Pretrained) -> Tensor:
    """Three normalised-looking random images, seeded: the batch every format is checked on."""
    size = int(pretrained.ctx.image_size)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, int(pretrained.ctx.in_chans), size, size, generator=generator)


def _write_timm(spec: TimmExport, pretrained: Pretrained, path: Path, probe: Tensor, expected: Tensor, verify: bool) -> dict[str, Any]:
    from safetensors.torch import save_file

    state = {name: tensor.detach().to("cpu", torch.float32).contiguous().clone() for name, tensor in spec.state_dict.items()}
    save_file(state, str(path), metadata={"format": "pt", "hjepa_kit_export": EXPORT_FORMAT, "architecture": spec.architecture})
    preprocessing = _preprocessing(pretrained)
    overlay = {
        "input_size": tuple(preprocessing["input_size"]),
        "mean": tuple(preprocessing["mean"]),
        "std": tuple(preprocessing["std"]),
        "interpolation": preprocessing["interpolation"],
        "crop_pct": preprocessing["crop_pct"],
        "crop_mode": preprocessing["crop_mode"],
    }
    section: dict[str, Any] = {
        "architecture": spec.architecture,
        "model_args": dict(spec.model_args),
        "pretrained_cfg_overlay": {k: list(v) if isinstance(v, tuple) else v for k, v in overlay.items()},
        "feature_dim": int(expected.shape[1]),
    }
    import timm

    section["timm_version"] = timm.__version__
    if verify:
        try:
            loaded = timm.create_model(
                spec.architecture, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), **overlay), **spec.model_args
            ).eval()
            with torch.no_grad():
                got = loaded(probe)
        except Exception as exc:  # the plugin's mapping is wrong: not the user's mistake, but say whose it is
            raise PluginError(
                f"encoder '{pretrained.encoder_name}': timm {timm.__version__} cannot load its export_timm() weights as "
                f"{spec.architecture}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from exc
        section["verified"] = _compare("timm", got, expected, pretrained.encoder_name)
    return section


def _compare(what: str, got: Tensor, expected: Tensor, name: str) -> dict[str, Any]:
    if tuple(got.shape) != tuple(expected.shape):
        raise PluginError(f"the {what} export of {name!r} returns features {tuple(got.shape)}, hjepa-kit {tuple(expected.shape)}")
    difference = float((got.float() - expected.float()).abs().max())
    if not difference <= TOLERANCE:
        raise PluginError(
            f"the {what} export of {name!r} does not reproduce hjepa-kit's features: largest absolute difference "
            f"{difference:.3g} > {TOLERANCE:g} on a probe batch; the export mapping is wrong (please report it)"
        )
    return {"max_abs_difference": difference, "tolerance": TOLERANCE, "images": int(got.shape[0])}

