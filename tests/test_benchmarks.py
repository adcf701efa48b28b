"""The benchmarks still run against the current trainer and evaluation (tiny settings, seconds).

They drive the trainer's internals (``_build``, ``train_step.feed``) and
``run_evaluation``; these tests catch a change there that would break them. The figures are not
checked, only that every promised field is there and sane. The CUDA run is skipped without a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hjepa_kit.training.heap import malloc_trim

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart.yaml"


def run_benchmark(script: str, *args: str, timeout: int = 300) -> dict:
    out = Path(args[args.index("--json") + 1])
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO, check=True, timeout=timeout, capture_output=True, text=True,
        env={**__import__("os").environ, "HJEPA_THREADS": "1"},
    )
    return json.loads(out.read_text())


def test_throughput_reports_every_promised_figure(tmp_path: Path) -> None:
    result = run_benchmark(
        "throughput.py", "--config", str(CONFIG), "--batch-size", "8", "--steps", "2", "--rounds", "2",
        "--warmup", "1", "--device", "cpu", "--json", str(tmp_path / "t.json"),
    )
    for key in ("hjepa_images_per_s", "reference_images_per_s", "ratio", "gflop_per_image", "peak_gflops",
                "fraction_of_peak", "peak_rss_mb", "batch_size", "context_fraction", "phases_ms_per_step"):
        assert key in result, key
    assert result["batch_size"] == 8
    # The quickstart's two views: 16 images through the encoder per step, as its run log counts them.
    assert result["images_per_step"] == 16
    assert result["hjepa_images_per_s"] > 0 and result["reference_images_per_s"] > 0
    assert 0 < result["gflop_per_image"] < result["reference_gflop_per_image"]
    assert 0 < result["context_fraction"] < 1
    assert 0 < result["fraction_of_peak"] < 1.5
    assert set(result["machine"]) >= {"cpu", "physical_cores", "threads", "torch", "load_average"}


def test_epoch_runs_through_fit_and_samples_memory(tmp_path: Path) -> None:
    result = run_benchmark(
        "epoch.py", "--config", str(CONFIG), "--images", "96", "--batch-size", "8", "--rss-every", "2",
        "--skip", "2", "--device", "cpu", "--json", str(tmp_path / "e.json"),
    )
    assert result["measured"] == "full epoch" and not result["extrapolated"]
    assert result["steps_done"] == result["steps_per_epoch"] == 12
    assert len(result["rss_samples"]) >= 6
    # The trainer releases free pages every 10 steps (the default, where glibc has malloc_trim):
    # step 10's RSS is recorded right after it.
    released = malloc_trim() is not None
    assert result["release_memory_every_steps"] == 10 and result["heap_trims"] == int(released)
    assert [s["step"] for s in result["rss_after_release_samples"]] == ([10] if released else [])
    assert result["epoch_s"] > 0 and result["steady_images_per_s"] > 0
    # FLOPs of the drawn masks and the peak, both measured in the run: their ratio is a fraction.
    assert result["gflop_per_image"] > 0 and result["peak_gflops"] > 0
    assert result["fraction_of_peak"] == pytest.approx(
        result["gflop_per_image"] * result["steady_images_per_s"] / result["peak_gflops"])


def test_evaluate_times_features_and_evaluators(tmp_path: Path) -> None:
    result = run_benchmark(
        "evaluate.py", "--config", str(CONFIG), "--train", "64", "--test", "32",
        "--json", str(tmp_path / "v.json"),
    )
    assert {"features_s", "knn_faiss_s", "linear_probe_s", "total_s"} <= set(result["timings_s"])
    assert result["features_plus_evaluators_s"] <= result["total_s"]


def test_quality_reports_learning_against_its_own_baselines(tmp_path: Path) -> None:
    # The real digits at 16 px (a 4x4 grid, 768 pixel dimensions) keep the run and its probes small.
    result = run_benchmark(
        "quality.py", "--config", str(CONFIG), "--datasets", "digits", "--seeds", "0", "1", "--budget-min", "0.05",
        "--curve", "0.02", "--set", "training.epochs=1", "--set", "data.batch_size=32", "--set", "data.image_size=16",
        "--json", str(tmp_path / "q.json"),
    )
    digits = result["summary"]["digits"]
    # The quickstart's two spatial levels and its cross-view level (level2), beside the encoder.
    assert set(digits["final"]) == {"encoder", "level0", "level1", "level2"}
    for rep, figures in digits["final"].items():
        for metric in ("knn", "linear"):
            assert figures[metric]["n"] == 2 and 0.0 <= figures[metric]["min"] <= figures[metric]["max"] <= 1.0
        assert 1.0 <= figures["rankme"]["mean"] <= figures["width"] == 192
        # The plan's graded feature figures, measured as the feature_quality evaluator does.
        assert figures["variance"]["n"] == 2 and figures["variance"]["min"] > 0.0
        assert 0.0 < figures["rank95"]["min"] <= figures["rank95"]["max"] <= 1.0
        # Minute 0 is the same run's random initialisation, measured before its first step.
        assert set(digits["curve"][rep]) >= {"0.0", "0.02"} and digits["random_init_knn"][rep]["n"] == 2
    # Raw pixels separate the digits well: the baseline is real, not a placeholder.
    assert digits["pixels"]["knn"]["mean"] > 0.9 and digits["pixels"]["linear"]["mean"] > 0.9
    # The pixel baseline depends on the dataset only: measured once, the same for every seed.
    assert result["runs"][0]["pixels"] == result["runs"][1]["pixels"]
    for run in result["runs"]:
        assert run["status"] in ("completed", "stopped") and run["steps"] >= 1
        assert run["curve"][0]["minute"] == 0.0 and run["curve"][0]["step"] == 0


def test_quality_long_schedule_and_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny synthetic shapes at 16 px (a 4x4 grid, 768 raw-pixel dimensions for the pixel probe),
    # one epoch of two steps, and a budget the runs never reach: each run ends at its epochs.
    result = run_benchmark(
        "quality.py", "--config", str(CONFIG), "--datasets", "synthetic", "--dataset-param", "synthetic.num_train=64",
        "--dataset-param", "synthetic.num_test=32", "--dataset-param", "synthetic.image_size=16",
        "--set", "data.image_size=16", "--set", "training.epochs=1", "--set", "data.batch_size=32",
        "--seeds", "0", "1", "--budget-min", "0.5", "--curve", "100", "--long-factor", "2",
        "--figure", str(tmp_path / "q.png"), "--json", str(tmp_path / "q.json"),
    )
    png = tmp_path / "q.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert result["figure"] == str(png) and result["long_factor"] == 2 and result["representation"] == "level0"
    assert result["datasets"] == {"synthetic": {"name": "synthetic",
                                                "params": {"num_train": 64, "num_test": 32, "image_size": 16}}}
    assert [(r["dataset"], r["seed"], r["schedule"]) for r in result["runs"]] == [("synthetic", 0, "shipped"),
                                                                                ("synthetic", 1, "shipped")]
    assert [(r["seed"], r["schedule"], r["factor"]) for r in result["long_runs"]] == [(0, "long", 2), (1, "long", 2)]
    for shipped, long in zip(result["runs"], result["long_runs"]):
        assert (shipped["epochs_configured"], long["epochs_configured"]) == (1, 2)
        assert (shipped["budget_min"], long["budget_min"]) == (0.5, 1.0)
        assert shipped["completed"] and long["completed"] and long["steps"] == 2 * shipped["steps"] == 4
        # The same seed starts from the same network: the untrained baseline is shared.
        assert long["curve"][0]["knn"] == shipped["curve"][0]["knn"]
    entry = result["summary"]["synthetic"]
    assert set(entry) >= {"final", "random_init_knn", "pixels", "curve", "long"}
    assert entry["pixels"]["knn"]["n"] == 2 and entry["random_init_knn"]["level0"]["n"] == 2
    long = entry["long"]
    assert long["factor"] == 2 and long["epochs_configured"] == 2
    assert long["shipped_completed"] == long["long_completed"] == 2
    assert set(long["final"]) == set(long["delta_points"]) == {"encoder", "level0", "level1", "level2"}
    for rep, delta in long["delta_points"].items():
        for metric in ("knn", "linear"):
            paired = [100 * (lr["final"][rep][metric] - sr["final"][rep][metric])
                      for sr, lr in zip(result["runs"], result["long_runs"])]
            assert delta[metric]["n"] == 2
            assert delta[metric]["mean"] == pytest.approx(sum(paired) / 2)
            assert delta[metric]["min"] == pytest.approx(min(paired))
            assert long["final"][rep][metric]["n"] == 2
    # The JSON alone redraws the figure; the band holds every seed's end point.
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _quality_report

    _quality_report.draw(result, tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 10_000
    minutes, mean, low, high = _quality_report.band(result["runs"], "level0")
    assert minutes[0] == 0.0 and all(lo <= m <= hi for m, lo, hi in zip(mean, low, high))
    assert high[-1] == max(r["final"]["level0"]["knn"] for r in result["runs"])


def test_quality_has_digits_with_nearest_resampling() -> None:
    # Parsed from the script, not imported: importing it would set the benchmarks' CPU defaults here.
    import ast

    tree = ast.parse((REPO / "benchmarks" / "quality.py").read_text())
    values = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Name)}
    datasets, defaults = ast.literal_eval(values["DATASETS"]), ast.literal_eval(values["DEFAULT_DATASETS"])
    assert defaults == ["digits", "digits_nearest", "synthetic"]
    assert datasets["digits_nearest"] == {"name": "digits", "params": {"interpolation": "nearest"}}
    from hjepa_kit.plugins.digits import DigitsDataset, DigitsParams

    params = DigitsParams(**datasets["digits_nearest"]["params"])
    nearest = DigitsDataset(32, params.interpolation).load("test")
    bilinear = DigitsDataset(32).load("test")
    assert torch.equal(nearest.labels, bilinear.labels) and not torch.equal(nearest.images, bilinear.images)
    # Nearest resampling repeats each source pixel over a 4x4 square.
    assert torch.equal(nearest.images, nearest.images[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_throughput_on_the_gpu_uses_bf16_and_fused_attention(tmp_path: Path) -> None:
    result = run_benchmark(
        "throughput.py", "--config", str(CONFIG), "--device", "cuda", "--batch-size", "64", "--steps", "3",
        "--json", str(tmp_path / "g.json"),
    )
    assert result["device"].startswith("cuda")
    assert result["dtype"] == "bfloat16"
    assert result["fused_attention"] is True
    assert result["hjepa_images_per_s"] > 0 and 0 < result["fraction_of_peak"] < 1.5
    assert "gpu" in result["machine"]


def test_quality_runs_the_other_protocols_beside_their_baselines(tmp_path: Path) -> None:
    result = run_benchmark(
        "quality.py", "--config", str(CONFIG), "--datasets", "synthetic", "--dataset-param", "synthetic.num_train=200",
        "--dataset-param", "synthetic.num_test=50", "--dataset-param", "synthetic.image_size=16",
        "--set", "data.image_size=16", "--set", "training.epochs=1", "--set", "data.batch_size=32",
        "--seeds", "0", "--budget-min", "0.5", "--curve", "100", "--protocols", "few_shot", "attentive_probe",
        "--json", str(tmp_path / "q.json"),
    )
    (run,) = result["runs"]
    trained, untrained = run["protocols"]["trained"], run["protocols"]["untrained"]
    for figures in (trained, untrained):
        # few-shot per representation and shot count; the attentive probe on the tokens they are pooled from
        assert set(figures["few_shot"]) == {"encoder", "level0", "level1", "level2"}
        assert all(set(shots) == {"1", "5", "10"} for shots in figures["few_shot"].values())
        assert all(0.0 <= v <= 1.0 for shots in figures["few_shot"].values() for v in shots.values())
        assert figures["attentive_probe"]["tokens_of"] == "encoder" and 0.0 <= figures["attentive_probe"]["top1"] <= 1.0
    assert set(run["pixels"]["few_shot"]) == {"1", "5", "10"}


def test_attentive_probe_benchmark_times_the_default_grid(tmp_path: Path) -> None:
    result = run_benchmark("attentive_probe.py", "--train", "120", "--test", "40", "--epochs", "1", "--head", "vjepa",
                           "--json", str(tmp_path / "a.json"))
    assert (result["head"], result["probes"], result["train"], result["tokens"], result["dim"]) == ("vjepa", 4, 120, 64, 192)
    assert result["wall_s"] > 0 and result["peak_rss_gb"] > 0 and 0.0 <= result["top1"] <= 1.0
    assert set(result["machine"]) >= {"cpu", "threads", "torch"}


def test_synthetic_factors_are_the_ones_drawn_and_the_probe_scores_them() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from synthetic_factors import ridge_cv
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from plugins.datasets.synthetic import SHAPES, render_shapes, shape_factors

    # The factors are the rendering's: without noise, a disc's centre pixel has the shape's colour
    # and the background's polarity decides which side of mid-grey the image's corners are.
    labels = torch.full((40,), SHAPES.index("disc"))
    images = render_shapes(labels, 32, noise=0.0, seed=3).float() / 255
    factors = shape_factors(40, 32, noise=0.0, seed=3)
    x, y = factors.centre.floor().long().unbind(1)
    centre = images[torch.arange(40), :, y, x]
    assert torch.allclose(centre, factors.foreground, atol=1 / 255 + 1e-6)
    corner = images[:, :, 0, 0].mean(dim=1)
    assert torch.equal(corner > 0.5, factors.light_background)
    # The probe: a feature that holds the factor scores it; one that does not, scores chance.
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(300, generator=generator).numpy()
    noise = torch.randn(300, 8, generator=generator).numpy()
    holds = noise.copy()
    holds[:, 0] = 3 * target + 1
    assert ridge_cv(holds, target, classify=False) > 0.99
    assert ridge_cv(noise, target, classify=False) < 0.1
    classes = (torch.arange(300) % 3).numpy()
    one_hot = noise.copy()
    one_hot[:, :3] += 5 * (classes[:, None] == [0, 1, 2])
    assert ridge_cv(one_hot, classes, classify=True) == 1.0
    assert ridge_cv(noise, classes, classify=True) < 0.5


def test_token_spread_separates_within_from_between_images_and_reads_a_run(checkpoint: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from token_spread import spread
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    generator = torch.Generator().manual_seed(0)
    per_image = torch.randn(50, 1, 6, generator=generator)  # every token of an image the same
    figures = spread(per_image.expand(50, 9, 6), std_target=0.5)
    assert figures["within images"] == pytest.approx(0.0, abs=1e-9)
    assert figures["between images"] == pytest.approx(per_image.squeeze(1).std(dim=0).mean().item(), rel=1e-6)
    scaled = torch.randn(40, 30, 4, generator=generator) * torch.tensor([0.1, 0.2, 2.0, 3.0])
    figures = spread(scaled, std_target=1.0)
    assert figures["under target"] == 0.5  # the two narrow dimensions
    assert figures["std min"] == pytest.approx(0.1, rel=0.1)
    # End to end on a trained run: one table row per checkpoint, with the run's own target.
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "token_spread.py"), "--checkpoint", str(checkpoint), "--images", "16"],
        cwd=REPO, check=True, timeout=120, capture_output=True, text=True, env={**__import__("os").environ, "HJEPA_THREADS": "1"},
    ).stdout.splitlines()
    assert out[0].startswith("| checkpoint | std over tokens") and len(out) == 3
    cells = [c.strip() for c in out[2].strip("|").split("|")]
    assert cells[0] == checkpoint.name and cells[2].endswith("of 1")
    assert 0 < float(cells[1].split(" / ")[0]) <= 1.5 and 0 < float(cells[4]) < 2


def test_poolings_pool_as_defined_and_follow_a_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from poolings import pool
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    tokens = torch.randn(3, 4 * 6, 5, generator=torch.Generator().manual_seed(0))
    pooled = pool(tokens, (4, 6), gem_powers=(3.0, 200.0))
    normed = torch.nn.functional.layer_norm(tokens, (5,))
    assert torch.allclose(pooled["mean"], normed.mean(1), atol=1e-6) and torch.equal(pooled["max"], normed.amax(1))
    gem = (normed.clamp(min=0) ** 3).mean(1) ** (1 / 3)
    assert torch.allclose(pooled["gem3"], gem, atol=1e-6)
    assert ((pooled["gem3"] <= pooled["max"].clamp(min=0) + 1e-6) & (pooled["gem3"] >= normed.clamp(min=0).mean(1) - 1e-6)).all()
    # A large power nears the max of the positive parts (and does not overflow to inf).
    top = pooled["max"].clamp(min=0)
    assert torch.isfinite(pooled["gem200"]).all() and torch.allclose(pooled["gem200"], top, rtol=0.03, atol=1e-6)
    with pytest.raises(ValueError, match="at least 1"):
        pool(tokens, (4, 6), gem_powers=(0.5,))
    # grid2: dimension d's four quarter means (rows 0-1 / 2-3, columns 0-2 / 3-5), side by side.
    as_map = normed.view(3, 4, 6, 5)
    top_left = as_map[:, :2, :3].mean(dim=(1, 2))
    bottom_right = as_map[:, 2:, 3:].mean(dim=(1, 2))
    assert pooled["grid2"].shape == (3, 20)
    assert torch.allclose(pooled["grid2"].view(3, 5, 4)[:, :, 0], top_left, atol=1e-6)
    assert torch.allclose(pooled["grid2"].view(3, 5, 4)[:, :, 3], bottom_right, atol=1e-6)
    with pytest.raises(ValueError, match="do not fill a 4 x 5 patch grid"):
        pool(tokens, (4, 5))
    # End to end: step 0 (the untrained network), every 2 steps, the end; each pooling beside the run's own.
    result = run_benchmark(
        "poolings.py", "--config", str(CONFIG), "--dataset", "synthetic", "--dataset-param", "synthetic.num_train=64",
        "--dataset-param", "synthetic.num_test=32", "--dataset-param", "synthetic.image_size=16",
        "--set", "data.image_size=16", "--set", "data.batch_size=16", "--set", "training.max_steps=3", "--every", "2",
        "--gem-power", "3", "8", "--json", str(tmp_path / "p.json"),
    )
    assert [p["step"] for p in result["points"]] == [0, 2, 3]
    for point in result["points"]:
        assert set(point["knn"]) >= {"encoder", "level0", "mean", "max", "gem3", "gem8", "grid2"}
        assert all(0.0 <= v <= 1.0 for v in point["knn"].values())
    # level0 is the max of the layer-normalised tokens: the same features, the same k-NN.
    assert result["points"][0]["knn"]["level0"] == result["points"][0]["knn"]["max"]
    assert 0.0 < result["pixels_knn"] <= 1.0


def _quality_run(dataset: str, seed: int, knn: float, variance: float | None = None) -> dict:
    """A ``quality.py`` run record with the fields its summary reads (figures made up for the test).

    Without ``variance`` the record is one of a file written before the plan's feature figures were measured.
    """
    figures = {"knn": knn, "linear": knn + 0.01, "rankme": 100.0 + seed, "width": 192}
    if variance is not None:
        figures.update(variance=variance, rank95=0.5 + variance)
    return {"dataset": dataset, "seed": seed, "schedule": "shipped", "steps": 10 + seed, "epochs_configured": 8,
            "completed": True, "train_core_minutes": 1.0, "final_loss": 0.5, "final": {"level0": figures},
            "curve": [{"minute": 0.0, "step": 0, "knn": {"level0": 0.5}}, {"minute": 1.0, "step": 10, "knn": {"level0": knn}}],
            "pixels": {"knn": 0.9, "linear": 0.8}}


def _quality_payload(*runs: dict, overrides: list[str] | None = None) -> dict:
    return {"config": "quickstart", "overrides": overrides or [], "representation": "level0", "budget_min": 1.0,
            "long_factor": 0, "seeds": sorted({r["seed"] for r in runs}), "figure": None,
            "datasets": {r["dataset"]: {"name": r["dataset"], "params": {}} for r in runs},
            "summary": {}, "runs": list(runs), "long_runs": []}


def test_quality_report_merges_runs_made_apart_and_refuses_mixed_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _quality_report

    seed0 = _quality_payload(_quality_run("digits", 0, 0.90), _quality_run("synthetic", 0, 0.40))
    seeds12 = _quality_payload(_quality_run("digits", 1, 0.94, variance=0.10), _quality_run("digits", 2, 0.98, variance=0.14))
    merged = _quality_report.merge([seed0, seeds12], ["s0.json", "s12.json"])
    assert merged["seeds"] == [0, 1, 2] and set(merged["datasets"]) == {"digits", "synthetic"}
    digits = merged["summary"]["digits"]["final"]["level0"]["knn"]
    assert digits["n"] == 3 and digits["mean"] == pytest.approx(0.94) and digits["std"] == pytest.approx(0.04)
    # The plan's feature figures: over the runs that measured them (seed 0's file predates them), graded
    # with feature_quality's thresholds; a set none of whose runs measured them shows "-".
    variance = merged["summary"]["digits"]["final"]["level0"]["variance"]
    assert variance["n"] == 2 and variance["mean"] == pytest.approx(0.12)
    assert _quality_report.graded(variance, "variance") == "0.120 ± 0.028 (good)"
    assert _quality_report.graded(merged["summary"]["digits"]["final"]["level0"]["rank95"], "rank95") == "0.620 ± 0.028 (good)"
    assert merged["summary"]["synthetic"]["final"]["level0"]["variance"] == {}
    assert "| 100.0 (192) | - | - |" in _quality_report.table({"synthetic": merged["summary"]["synthetic"]})
    assert merged["summary"]["synthetic"]["final"]["level0"]["knn"]["n"] == 1
    with pytest.raises(ValueError, match=r"s0b.json: digits seed 0 \(shipped\) is also in s0.json"):
        _quality_report.merge([seed0, seed0], ["s0.json", "s0b.json"])
    noisy = _quality_payload(_quality_run("digits", 3, 0.9), overrides=["data.augmentation.noise_prob=0.8"])
    with pytest.raises(ValueError, match=r"noisy.json: overrides is \['data.augmentation.noise_prob=0.8'\], but s0.json has \[\]"):
        _quality_report.merge([seed0, noisy], ["s0.json", "noisy.json"])
    # From the command line: the merged tables, then the figure; a bad merge is one line, exit 2.
    paths = []
    for name, payload in (("s0.json", seed0), ("s12.json", seeds12), ("noisy.json", noisy)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(payload))
    script = str(REPO / "benchmarks" / "_quality_report.py")
    done = subprocess.run([sys.executable, script, str(paths[0]), str(paths[1]), str(tmp_path / "q.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| digits | 0.940 ± 0.040 |" in done.stdout and (tmp_path / "q.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, script, str(paths[0]), str(paths[2]), str(tmp_path / "bad.png")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "noisy.json: overrides is" in bad.stderr
    assert not (tmp_path / "bad.png").exists()
    (tmp_path / "other.json").write_text(json.dumps({"steps": 3}))
    other = subprocess.run([sys.executable, script, str(tmp_path / "other.json"), str(tmp_path / "other.png")],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "other.json: not a quality.py --json file (no config" in other.stderr
