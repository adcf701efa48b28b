"""`hjepa export`: the target encoder, loaded by plain timm (and ONNX Runtime), gives hjepa-kit's features."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import hjepa_kit
from hjepa_kit.cli import main
from hjepa_kit.data.augment import eval_transform
from hjepa_kit.errors import OutputError, PluginError, UserError
from hjepa_kit.evaluation.exporting import TOLERANCE, TimmExport
from hjepa_kit.evaluation.pretrained import load_pretrained

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def reference(checkpoint):
    """Real test images of the run, normalised as evaluation sees them, and hjepa-kit's features of them."""
    pretrained = load_pretrained(checkpoint)
    data = pretrained.build_dataset().load("test")
    images = eval_transform(data.images[:12], pretrained.ctx.image_size, pretrained.mean, pretrained.std)
    return images, pretrained.model.features(images)


def test_plain_timm_loads_the_export_and_gives_the_encoder_features(checkpoint, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the documented call must not need the hub
    out = tmp_path / "export"
    result = hjepa_kit.export(checkpoint, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert result.files["timm"] == out / "model.safetensors"
    images, features = reference

    # The call documented on the "Use your encoder" page, written out by hand.
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        img_size=16, patch_size=4, class_token=False, global_pool="avg", fc_norm=False, num_classes=0,
    ).eval()
    with torch.no_grad():
        got = model(images)
    assert got.shape == (12, 192)
    assert (got - features["encoder"]).abs().max() <= TOLERANCE
    random_init = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, class_token=False,
                                    global_pool="avg", fc_norm=False, num_classes=0).eval()
    with torch.no_grad():
        assert (random_init(images) - features["encoder"]).abs().max() > 100 * TOLERANCE  # the weights did load

    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "hjepa-kit-export/1" and config["representation"] == "encoder"
    assert config["evaluation_representation"] == "encoder"
    assert "mean over the patch grid" in config["pooling"]
    assert config["preprocessing"]["input_size"] == [3, 16, 16]
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and config["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert config["timm"]["architecture"] == "vit_tiny_patch16_224" and config["feature_dim"] == 192
    assert config["timm"]["verified"]["max_abs_difference"] <= TOLERANCE

    # The call config.json spells out, preprocessing included, runs as written.
    namespace: dict = {}
    exec(config["usage"]["timm"], namespace)
    with torch.no_grad():
        assert (namespace["model"](images) - features["encoder"]).abs().max() <= TOLERANCE
    data_config = timm.data.resolve_data_config(model=namespace["model"])
    assert data_config["input_size"] == (3, 16, 16)
    assert tuple(data_config["mean"]) == (0.485, 0.456, 0.406) and data_config["crop_pct"] == 1.0


def test_onnx_export_gives_the_level_features_for_any_batch(checkpoint, reference, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "onnx",
                 "--representation", "level1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx"]
    config = json.loads((out / "config.json").read_text())
    assert config["representation"] == "level1" and "level 1" in config["pooling"]
    assert config["onnx"]["verified"]["max_abs_difference"] <= TOLERANCE
    images, features = reference
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for count in (1, 5, 12):  # the batch is dynamic
        got = torch.from_numpy(session.run(["features"], {"images": images[:count].numpy()})[0])
        assert got.shape == (count, 192)
        assert (got - features["level1"][:count]).abs().max() <= TOLERANCE


def test_the_default_representation_is_the_one_the_run_evaluated(level0_checkpoint, reference, tmp_path, capsys):
    """A run graded on level0 (as the quickstart) exports level0 unless told otherwise: users get what was graded."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(level0_checkpoint), "--out", str(out), "--format", "onnx"]) == 0
    assert "representation level0: the run's evaluated representation (evaluation.representation)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["representation"] == config["evaluation_representation"] == "level0" and "level 0" in config["pooling"]
    assert config["onnx"]["verified"]["max_abs_difference"] <= TOLERANCE
    images, features = reference  # the same weights
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["features"], {"images": images.numpy()})[0])
    assert (got - features["level0"]).abs().max() <= TOLERANCE


def test_timm_refuses_an_evaluated_level_by_default_and_says_how_to_choose_encoder(level0_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(level0_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--representation defaults to the run's evaluated representation 'level0' (evaluation.representation" in err
    assert "the timm format holds the encoder alone" in err and "--format onnx" in err and "`hjepa embed`" in err
    assert "pass --representation encoder explicitly" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []

    # Asked for explicitly, the encoder is exported for timm, and the output says it is not what was graded.
    assert main(["export", "--checkpoint", str(level0_checkpoint), "--out", str(out), "--representation", "encoder"]) == 0
    assert "representation encoder: chosen with --representation; the run evaluated level0" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["representation"], config["evaluation_representation"]) == ("encoder", "level0")
    assert config["timm"]["verified"]["max_abs_difference"] <= TOLERANCE


@pytest.mark.parametrize("formats", [["timm"], ["timm", "onnx"]])
def test_timm_cannot_hold_a_level_and_the_error_names_it_and_the_alternatives(checkpoint, tmp_path, formats):
    """level0 layer-normalises the final tokens again before its max; timm has one norm before its pool, so it is refused."""
    with pytest.raises(UserError) as info:
        hjepa_kit.export(checkpoint, tmp_path / "export", formats=formats, representation="level0")
    message = str(info.value)
    assert message.startswith("--representation 'level0': the timm format holds the encoder alone")
    assert "gives only the 'encoder' representation" in message and "no timm VisionTransformer configuration" in message
    assert "--format onnx" in message and "`hjepa embed --representation level0`" in message
    assert "defaults to" not in message and "--representation encoder" not in message
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_its_packages_is_a_clear_error(checkpoint, tmp_path, monkeypatch):
    for module in ("onnx", "onnxscript"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    out = tmp_path / "onnx"
    with pytest.raises(UserError, match=r"--format onnx needs the packages onnx and onnxscript.*pip install 'hjepa-kit\[export\]'"):
        hjepa_kit.export(checkpoint, out, formats=["onnx"])
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "keras"], "--format 'keras': unknown export format; allowed: timm, onnx"),
        (["--representation", "level1"], "the timm format holds the encoder alone"),
        (["--representation", "level9"], "--representation 'level9': unknown representation; this model has encoder, level0, level1"),
    ],
)
def test_bad_format_or_representation_exits_2_and_writes_nothing(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_checkpoint_is_refused(tmp_path, capsys):
    foreign = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, foreign)
    assert main(["export", "--checkpoint", str(foreign), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert f"{foreign}: not an hjepa-kit checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "export").exists()


def test_existing_folders_are_kept_unless_forced_and_only_exports_are_replaced(checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "already exists; choose another folder or pass --force" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--force"]) == 2
    assert "does not hold an earlier export, so --force will not replace it" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    earlier = tmp_path / "earlier"
    hjepa_kit.export(checkpoint, earlier)
    (earlier / "stale.txt").write_text("from before")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(earlier), "--force"]) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "export"]  # no temporary left


def test_an_unwritable_place_is_a_clear_error(checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(blocker / "export")]) == 2
    err = capsys.readouterr().err
    assert f"{blocker}: cannot create the folder for export" in err and "Traceback" not in err


def test_a_failure_halfway_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import hjepa_kit.evaluation.exporting as exporting

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporting, "timm_call", fail)  # the weights are written by then, config.json is not
    out = tmp_path / "export"
    with pytest.raises(OutputError, match=f"{out}: writing failed: No space left on device"):
        hjepa_kit.export(checkpoint, out)
    assert list(tmp_path.iterdir()) == []


def test_an_encoder_without_a_timm_twin_is_refused_by_name(checkpoint, tmp_path, monkeypatch):
    from hjepa_kit.plugins.vit import VitEncoder

    monkeypatch.delattr(VitEncoder, "export_timm")
    with pytest.raises(UserError, match=r"encoder 'vit_tiny' from plugin vit .* offers no export_timm\(\).*--format onnx"):
        hjepa_kit.export(checkpoint, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_a_wrong_mapping_is_caught_before_anything_is_written(checkpoint, tmp_path, monkeypatch):
    """timm's default for global_pool='avg' norms after pooling; the check must notice that mistake."""
    from hjepa_kit.plugins.vit import VitEncoder

    right = VitEncoder.export_timm

    def norm_after_pooling(self) -> TimmExport:
        spec = right(self)
        args = {k: v for k, v in spec.model_args.items() if k != "fc_norm"}
        state = dict(spec.state_dict)
        state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
        return TimmExport(architecture=spec.architecture, model_args=args, state_dict=state)

    monkeypatch.setattr(VitEncoder, "export_timm", norm_after_pooling)
    with pytest.raises(PluginError, match="does not reproduce hjepa-kit's features"):
        hjepa_kit.export(checkpoint, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_onnx_of_an_encoder_that_encodes_in_slices_still_takes_any_batch(checkpoint, reference, tmp_path, monkeypatch):
    """ViT encodes large no-grad batches a slice at a time on the CPU; a traced graph must not bake the slices in."""
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    import hjepa_kit.evaluation.exporting as exporting

    def slicing(*args, **kwargs):
        pretrained = load_pretrained(*args, **kwargs)
        pretrained.model.target_encoder.inference_chunk_tokens = 16  # one 16-patch image per slice
        return pretrained

    monkeypatch.setattr(exporting, "load_pretrained", slicing)
    out = tmp_path / "onnx"
    hjepa_kit.export(checkpoint, out, formats=["onnx"])
    images, features = reference
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["features"], {"images": images[:5].numpy()})[0])
    assert got.shape == (5, 192) and (got - features["encoder"][:5]).abs().max() <= TOLERANCE
