"""The training loop: accumulation, schedules, EMA, precision, checkpoints, callbacks.

:class:`Trainer` owns a run from its configuration to its last checkpoint. It knows no model: the
encoder, masker, predictor, loss, dataset, evaluators and callbacks all come from plugins. The
pieces it drives live beside it: ``optim`` (AdamW groups, gradient norm), ``online`` (online
evaluation, collapse monitor, best checkpoint), ``runlog`` (log handlers, interval figures),
``signals`` (SIGINT/SIGTERM), ``distributed``, ``checkpoint``, ``memory`` and ``schedules``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from .. import __version__
from ..build import Built, build_dataset, build_model, build_named, make_context
from .checkpoint import (
    find_latest, load_checkpoint, load_training_state, remove_stale_temporaries, resume_target, save_checkpoint,
)
from .compiling import AUTO_TRAIN_MIN_STEPS, compile_for_training, eager, should_compile
from ..config import RunConfig, dump_config, load_config
from ..contracts import Masks
from ..data.loader import build_train_loader, estimate_bytes
from .distributed import (
    DistInfo, any_rank, no_sync, parameters_match, rescale_position, setup_distributed, teardown_distributed, wrap_ddp,
)
from ..errors import CollapseDetected, TrainingStopped, UserError
from .health import HealthMonitor, collapse_problem
from .heap import HeapTrimmer
from .memory import check_memory_budget, estimate_peak_memory
from .online import OnlineEvaluation, feature_stats, new_best
from .optim import gradient_norm, make_optimizer, set_schedule
from ..registry import Registry
from .runlog import LogWindow, close_run_log, log_interval, open_run_log, prepare_output_folder
from ..runtime import autocast_dtype, peak_rss_mb, resolve_device, restore_rng_state, rng_state, seed_everything
from .schedules import Schedules
from .signals import Interrupt
from .stopping import EarlyStopping
from ..threads import configure_threads

__all__ = ["Trainer", "TrainResult"]

log = logging.getLogger("hjepa_kit")


@attrs.frozen
class TrainResult:
    """What :func:`hjepa_kit.train` returns.

    Attributes:
        status: ``completed``, ``interrupted`` (SIGINT/SIGTERM) or ``stopped`` (``max_steps``).
        log_dir: folder of training.log, metrics.jsonl, config.yaml and TensorBoard events.
        checkpoint_dir: folder of the checkpoints.
        checkpoints: reason (``latest``, ``best``, ``final``, ``epoch_5`` ...) -> path.
        metrics: the last epoch's metrics (loss, online evaluation figures).
        steps: optimizer steps done.
        epochs: epochs done.
    """

    status: str
    log_dir: Path
    checkpoint_dir: Path
    checkpoints: dict[str, Path]
    metrics: dict[str, float]
    steps: int
    epochs: int


class Trainer:
    """Runs H-JEPA pretraining for one configuration.

    Args:
        config: a :class:`~hjepa_kit.config.RunConfig`, a YAML path or a mapping.
        plugins: extra plugin objects for this run only (their hooks and components).
        registry: an existing registry (``plugins`` are added to it).
        source: the configuration's file name, for messages.
        resume: a checkpoint to continue from, or ``"auto"`` for the newest of the run folder.
        console: echo log lines to stderr.

    Attributes (for callbacks): ``config``, ``log_dir``, ``checkpoint_dir``, ``model``, ``step``
    (optimizer steps done), ``epoch`` (epochs done), ``steps_per_epoch``, ``total_steps``,
    ``device``, ``last_metrics``.
    """

    def __init__(
        self,
        config: RunConfig | str | os.PathLike[str] | Mapping[str, Any],
        *,
        plugins: Iterable[Any] = (),
        registry: Registry | None = None,
        source: str | None = None,
        resume: str | os.PathLike[str] | None = None,
        console: bool = True,
    ) -> None:
        self.source = source or (str(config) if isinstance(config, (str, os.PathLike)) else "<config>")
        self.config = load_config(config)
        self.registry = registry or Registry()
        self._run_plugins = []
        for plugin in plugins:
            self.registry.add_plugin(plugin)
            self._run_plugins.append(plugin)
        self.resolved = self.registry.resolve(self.config, self.source)
        self.resume_from = resume
        self.console = console
        self.log_dir = self.config.log_dir
        self.checkpoint_dir = self.config.checkpoint_dir
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.compiled = False
        self.last_metrics: dict[str, float] = {}
        self.checkpoints: dict[str, Path] = {}
        self.best: dict[str, Any] = {}
        self.last_target_tokens: torch.Tensor | None = None
        self._callbacks: list[Any] = []
        self._handlers: list[logging.Handler] = []
        self.dist = DistInfo()
        self._ddp_encoder: Any = None
        self._ddp_predictor: Any = None
        self._online: OnlineEvaluation | None = None
        self.stop_reason: str | None = None
        self.healthy_checkpoint: Path | None = None
        self.early_stopping: EarlyStopping | None = None
        self.health = HealthMonitor(0)
        self._health_widths: dict[str, int] = {}

    def request_stop(self, reason: str) -> None:
        """Stop the run after the current optimizer step (for callbacks: a time budget, early stopping).

        The run ends with status ``stopped``, logs ``reason`` and writes ``final.pth`` as usual.
        Under DDP every rank stops at the same step (a request on any rank stops all of them).
        """
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def rank(self) -> int:
        """This process's rank (0 without distributed training)."""
        return self.dist.rank

    @property
    def world_size(self) -> int:
        """Number of training processes."""
        return self.dist.world_size

    def _hook(self, name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook: on rank 0 only."""
        if self.dist.is_main:
            getattr(self.registry.hook, name)(trainer=self, **kwargs)

    # --- setup ------------------------------------------------------------------------------

    def _setup_outputs(self) -> None:
        log.setLevel(logging.INFO)
        log.propagate = False
        if not self.dist.is_main:
            return  # rank 0 alone writes logs and checkpoints
        for folder in (self.log_dir, self.checkpoint_dir):
            prepare_output_folder(folder)
        remove_stale_temporaries(self.checkpoint_dir)
        self._handlers = open_run_log(self.log_dir, self.console)

    def _teardown_outputs(self) -> None:
        close_run_log(self._handlers)

    def _build(self) -> None:
        cfg = self.config
        self.threads = configure_threads(cfg.training.threads)
        self.amp_dtype = autocast_dtype(cfg.training.precision, self.device)
        seed_everything(cfg.seed)
        ctx = make_context(cfg, self.device)
        self.dataset = build_dataset(self.resolved, ctx)
        if cfg.data.train_split not in self.dataset.splits:
            raise UserError(
                f"data.train_split: the dataset '{cfg.data.dataset.name}' has no split {cfg.data.train_split!r}; "
                f"it has {', '.join(self.dataset.splits)}"
            )
        self.loader = build_train_loader(
            self.dataset, cfg.data, image_size=ctx.image_size, seed=cfg.seed, device=self.device,
            rank=self.dist.rank, world_size=self.dist.world_size,
        )
        micro_batches = len(self.loader)
        if micro_batches < cfg.training.accumulation_steps:
            raise UserError(
                f"the training split has {micro_batches} batches of {cfg.data.batch_size}, fewer than "
                f"training.accumulation_steps={cfg.training.accumulation_steps}: use a smaller data.batch_size"
            )
        self.built: Built = build_model(self.resolved, ctx)
        self.ctx = ctx
        self.model = self.built.model
        self.masker = self.built.masker
        self.loss_fn = self.built.loss
        self.optimizer = make_optimizer(self.model, cfg)
        self.steps_per_epoch = micro_batches // cfg.training.accumulation_steps
        full = self.steps_per_epoch * cfg.training.epochs
        self.total_steps = min(full, cfg.training.max_steps) if cfg.training.max_steps else full
        self.schedules = Schedules.from_training(cfg.training, self.steps_per_epoch)
        self.mask_generator = torch.Generator()
        self.heap = HeapTrimmer(cfg.training.release_memory_every_steps)
        self.health = HealthMonitor(cfg.logging.health_samples)
        stopping = cfg.training.early_stopping
        self.early_stopping = EarlyStopping(stopping, cfg.evaluation.representation) if stopping else None
        self._check_memory()  # eager: it runs the model on one image
        self.compiled = should_compile(cfg.training.compile, self.device, key="training.compile",
                                       large_enough=self.total_steps >= AUTO_TRAIN_MIN_STEPS)
        if self.compiled:
            compile_for_training(self.model)
        if self.dist.enabled:
            self._ddp_encoder, self._ddp_predictor = wrap_ddp(self.model, self.device)

    def _check_memory(self) -> None:
        cfg = self.config
        data_bytes = estimate_bytes(self.dataset, cfg.data.train_split) or 0
        estimate = estimate_peak_memory(
            self.model, self.loss_fn, self.masker, batch_size=cfg.data.batch_size, image_size=self.ctx.image_size,
            in_chans=self.ctx.in_chans, data_bytes=data_bytes, autocast_dtype=self.amp_dtype, device=self.device,
        )
        self.memory_estimate = estimate
        budget = cfg.training.memory_budget_gb
        log.info("estimated peak memory: %s; budget %s", estimate.describe(), f"{budget:g} GB" if budget else "none")
        check_memory_budget(estimate, budget, batch_size=cfg.data.batch_size, accumulation_steps=cfg.training.accumulation_steps)

    def _write_config(self) -> None:
        params = {path: p for path, (_, p) in self.resolved.items()}
        text = dump_config(self.config, params)
        target = self.log_dir / "config.yaml"
        tmp = target.with_suffix(".yaml.tmp")
        tmp.write_text(f"# resolved configuration of run '{self.config.name}' (hjepa-kit {__version__})\n" + text)
        os.replace(tmp, target)

    def resolved_config(self) -> dict[str, Any]:
        """The configuration as plain data with every component's parameters filled in."""
        import yaml

        params = {path: p for path, (_, p) in self.resolved.items()}
        return yaml.safe_load(dump_config(self.config, params))

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, plus what evaluation needs to rebuild the model."""
        return {
            "hjepa_kit_version": __version__,
            "config": self.resolved_config(),
            "build": {"image_size": self.ctx.image_size, "in_chans": self.ctx.in_chans, "num_classes": self.ctx.num_classes},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "rng": rng_state(),
            "best": dict(self.best),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else {},
            "metrics": dict(self.last_metrics),
        }

    def save(self, name: str, reason: str) -> Path:
        """Write ``<checkpoint_dir>/<name>`` atomically and tell the callbacks (rank 0 only)."""
        path = self.checkpoint_dir / name
        if not self.dist.is_main:
            return path
        path = save_checkpoint(self.state_dict(), path)
        self.checkpoints[name.removesuffix(".pth")] = path
        log.info("checkpoint %s written (%s, step %d)", path, reason, self.step)
        self._hook("hjepa_checkpoint_saved", path=str(path), reason=reason)
        return path

    def _resume(self) -> None:
        target = resume_target(self.resume_from, self.checkpoint_dir)
        if target is None:
            return
        state = load_checkpoint(target, map_location=self.device)
        load_training_state(state, self.model, self.optimizer, target)
        self.epoch = int(state["epoch"])
        self.step, self.batch_in_epoch = rescale_position(
            int(state["step"]), int(state.get("batch_in_epoch", 0)), int(state.get("world_size", 1)), self.dist.world_size
        )
        self.best = dict(state.get("best", {}))
        self.last_metrics = dict(state.get("metrics", {}))
        restore_rng_state(state["rng"])
        self.healthy_checkpoint = Path(target)
        if self.early_stopping is not None:
            self.early_stopping.load_state_dict(state.get("early_stopping") or {})
        log.info("resumed from %s at epoch %d, step %d", target, self.epoch, self.step)

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until the configured epochs (or ``max_steps``) are done; return the result."""
        self.device = resolve_device(self.config.device)
        self.dist, self.device = setup_distributed(self.device)
        self._setup_outputs()
        status = "failed"
        try:
            self._build()
            self._resume()
            if self.dist.is_main:
                self._write_config()
            for spec_path in (p for p in self.resolved if p.startswith("callbacks[") and self.dist.is_main):
                callback = build_named(self.registry, self.resolved, spec_path, self.ctx)
                self.registry.add_plugin(callback, name=f"{spec_path}:{self.resolved[spec_path][0].name}")
                self._callbacks.append(callback)
            self._log_start()
            self._hook("hjepa_fit_start")
            with Interrupt() as interrupt:
                status = self._loop(interrupt)
                # Still inside: a second signal during this last write must not kill it.
                if status == "interrupted":
                    self.save("interrupted.pth", "interrupted")
                elif self.config.checkpoint.save_final:
                    self.save("final.pth", "final")
            log.info("run %s: %s after %d steps (%d epochs); peak RSS %.0f MB", self.config.name, status, self.step, self.epoch, peak_rss_mb())
            return TrainResult(
                status=status,
                log_dir=self.log_dir,
                checkpoint_dir=self.checkpoint_dir,
                checkpoints=dict(self.checkpoints),
                metrics=dict(self.last_metrics),
                steps=self.step,
                epochs=self.epoch,
            )
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except CollapseDetected as exc:
            status = "collapsed"
            log.error("%s", exc)
            raise
        except Exception as exc:
            if isinstance(exc, UserError):
                log.error("%s", exc)
            else:
                log.exception("run failed")
            raise
        finally:
            try:
                self._hook("hjepa_fit_end", status=status)
            finally:
                for callback in self._callbacks:
                    self.registry.remove_plugin(callback)
                for plugin in self._run_plugins:
                    self.registry.remove_plugin(plugin)
                log.info("status: %s (peak RSS %.0f MB)", status, peak_rss_mb())
                self._teardown_outputs()
                teardown_distributed(self.dist)

    def _log_start(self) -> None:
        cfg = self.config
        params = sum(p.numel() for p in self.model.context_encoder.parameters())
        pred = sum(p.numel() for p in self.model.predictor.parameters())
        log.info(
            "run %s: %s on %s (%s, %d threads%s), %d images of %dpx, grid %s, encoder %.1fM params, predictor %.1fM",
            cfg.name, cfg.model.encoder.name, self.device, "bf16" if self.amp_dtype else "fp32", self.threads,
            ", compiled: the first steps compile" if self.compiled else "",
            len(self.loader) * cfg.data.batch_size, self.ctx.image_size, "x".join(map(str, self.ctx.grid_size or ())),
            params / 1e6, pred / 1e6,
        )
        log.info(
            "%d epochs x %d steps (batch %d x accumulation %d = %d); logs: %s; checkpoints: %s",
            cfg.training.epochs, self.steps_per_epoch, cfg.data.batch_size, cfg.training.accumulation_steps,
            cfg.data.batch_size * cfg.training.accumulation_steps, self.log_dir, self.checkpoint_dir,
        )

    def _loop(self, interrupt: Interrupt) -> str:
        cfg = self.config
        accumulation = cfg.training.accumulation_steps
        self.model.train()
        metrics_path = self.log_dir / "metrics.jsonl"
        self._metrics_file = open(metrics_path, "a", encoding="utf-8")
        try:
            if self.early_stopping is not None and self.early_stopping.exhausted and self.epoch < cfg.training.epochs:
                # A resumed run that had stopped early: its patience is still used up.
                self.request_stop(self.early_stopping.reason() + " (resumed after the stop: raise the patience "
                                  "or set training.early_stopping to null to train on)")
            while self.epoch < cfg.training.epochs:
                if self.step >= self.total_steps:
                    return "stopped"
                if any_rank(self.stop_reason is not None, info=self.dist, device=self.device)[0]:
                    log.info("stopping at step %d: %s", self.step, self.stop_reason or "another rank asked to stop")
                    return "stopped"
                self.loader.set_epoch(self.epoch)
                skip = self.batch_in_epoch
                if skip:
                    self.loader.skip(skip)
                sums: dict[str, float] = {}
                count = 0
                window = LogWindow()
                micro = 0
                for images, _labels in self.loader:
                    micro_index = self.batch_in_epoch
                    terms = self._micro_step(images, micro_index, accumulation)
                    self.batch_in_epoch += 1
                    micro += 1
                    window.add(images.shape[0], terms)
                    if micro % accumulation:
                        continue
                    step_metrics = self._optimizer_step()
                    step_metrics.update(window.means())
                    for key, value in step_metrics.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                    self._after_step(step_metrics, window)
                    interrupted, stop = any_rank(interrupt.signal is not None, self.stop_reason is not None,
                                                 info=self.dist, device=self.device)
                    if interrupted:
                        return "interrupted"
                    if stop:
                        log.info("stopping at step %d: %s", self.step, self.stop_reason or "another rank asked to stop")
                        return "stopped"
                    if self.step >= self.total_steps:
                        break
                    if self.batch_in_epoch + accumulation > len(self.loader):
                        break  # the leftover micro-batches cannot make a whole optimizer step
                finished_epoch = self.batch_in_epoch >= (len(self.loader) // accumulation) * accumulation
                if not finished_epoch:
                    return "stopped"
                self.epoch += 1
                self.batch_in_epoch = 0
                epoch_metrics = {k: v / max(count, 1) for k, v in sums.items()}
                self._end_epoch(epoch_metrics)
                if self.step >= self.total_steps and self.epoch < cfg.training.epochs:
                    return "stopped"
            return "completed"
        finally:
            self._metrics_file.close()

    def _micro_step(self, images: torch.Tensor, micro_index: int, accumulation: int) -> dict[str, float]:
        cfg = self.config
        # Masks are a pure function of (seed, epoch, micro-batch, rank): a resumed run draws the same ones.
        self.mask_generator.manual_seed(
            (cfg.seed * 1_000_003 + self.epoch * 100_003 + micro_index * 101 + self.dist.rank) % (2**63)
        )
        masks: Masks = self.masker(images.shape[0], self.mask_generator).to(self.device)
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            with torch.no_grad():
                target_out = self.model.target_encoder(images, return_blocks=tuple(self.model.predictor.target_blocks))
                targets = [t.detach() for t in self.model.predictor.make_targets(target_out, masks)]
                # Only the epoch's last micro-batches feed the RankMe measured at its end.
                usable = len(self.loader) // accumulation * accumulation
                if self.health.enabled and (usable - micro_index) * images.shape[0] <= self.health.samples + images.shape[0]:
                    pooled = self.model.pooled(target_out)
                    self._health_widths = {k: int(v.shape[1]) for k, v in pooled.items()}
                    self.health.add(pooled)
            sync = (micro_index + 1) % accumulation == 0
            with no_sync((self._ddp_encoder, self._ddp_predictor), not sync):
                predictions, context = self.model.predict(images, masks, self._ddp_encoder, self._ddp_predictor)
                out = self.loss_fn(predictions, targets, context)
                loss = out.total
                value = float(loss.detach())
                # Under DDP a rank must not stop alone (the others would wait in all-reduce); the
                # all-reduced gradient norm is non-finite on every rank and stops them together.
                if not math.isfinite(value) and not self.dist.enabled:
                    self._non_finite("loss", value, out.terms)
                (loss / accumulation).backward()
        if (self.step + 1) % cfg.logging.feature_stats_every_steps == 0:
            self.last_target_tokens = target_out.tokens.detach()
        terms = {"loss": value}
        terms.update({f"loss/{k}": float(v.detach()) for k, v in out.terms.items()})
        return terms

    def _non_finite(self, what: str, value: float, terms: Mapping[str, torch.Tensor]) -> None:
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        last = self.checkpoints.get("latest") or find_latest(self.checkpoint_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingStopped(
            f"training stopped at epoch {self.epoch + 1}, step {self.step + 1}: the {what} is {value}"
            + (f" ({detail})" if detail else "")
            + f"; {kept}. Try one of:\n" + self._fallbacks(last)
        )

    def _fallbacks(self, checkpoint: Path | None) -> str:
        """The usual remedies for divergence and collapse, as commands that resume from ``checkpoint``."""
        resume = f" --resume {checkpoint}" if checkpoint else ""
        base = f"hjepa train --config {self.log_dir / 'config.yaml'}"  # the resolved configuration of this run
        lr = self.config.training.lr / 5
        return "\n".join(f"  {base} --set {change}{resume}" for change in (
            f"training.lr={lr:.2g}",
            "training.ema_momentum=[0.999,1.0]",
            "loss.params.variance_weight=1.0 --set loss.params.covariance_weight=0.04",
        ))

    def _check_collapse(self, reason: str | None) -> None:
        """Answer a collapse as ``training.on_collapse`` says: a warning, or a stop that keeps the last healthy checkpoint."""
        if reason is None:
            return
        last = self.healthy_checkpoint
        kept = (f"the last healthy checkpoint is {last} (it is kept: latest.pth is not overwritten)" if last
                else "no healthy checkpoint was written (the collapse came in the first epoch)")
        message = (f"representation collapse at epoch {self.epoch + (0 if self.batch_in_epoch == 0 else 1)}, step {self.step}: "
                   f"{reason}; {kept}. Try one of:\n" + self._fallbacks(last))
        if self.config.training.on_collapse == "stop":
            raise CollapseDetected(message + "\n(training.on_collapse=stop; set it to warn to train on)")
        log.warning("%s", message)

    def _optimizer_step(self) -> dict[str, float]:
        cfg = self.config
        lr = self.schedules.lr_at(self.step)
        wd = self.schedules.weight_decay_at(self.step)
        set_schedule(self.optimizer, lr, wd)
        grad_norm = gradient_norm(self.optimizer, cfg.training.grad_clip)
        if not math.isfinite(grad_norm):
            self._non_finite("gradient norm", grad_norm, {})
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = self.schedules.momentum_at(self.step)
        self.model.update_target(momentum)
        self.step += 1
        self.heap.after_step(self.step)
        every = self.config.training.ddp_check_every_steps
        if self.dist.enabled and every and self.step % every == 0:
            same, spread = parameters_match([self.model.context_encoder, self.model.target_encoder, self.model.predictor], self.dist, self.device)
            if not same:
                raise RuntimeError(f"step {self.step}: the ranks' parameters differ (largest checksum difference {spread:.3g})")
            log.info("step %d: parameters identical on %d ranks", self.step, self.dist.world_size)
        return {"lr": lr, "wd": wd, "momentum": momentum, "grad_norm": grad_norm}

    def _after_step(self, metrics: dict[str, float], window: LogWindow) -> None:
        cfg = self.config
        if self.last_target_tokens is not None:
            metrics.update(feature_stats(self.last_target_tokens, cfg.logging, self.step,
                                         warn=cfg.training.on_collapse == "warn"))
            self.last_target_tokens = None
            if metrics.get("features/collapse_warning") and cfg.training.on_collapse == "stop":
                self._check_collapse(f"the target tokens' std is {metrics['features/std']:.4g} and their effective rank "
                                     f"{metrics['features/effective_rank']:.1f} (thresholds logging.collapse_*)")
        metrics["images_per_s"] = window.images_per_s()
        remaining = self.total_steps - self.step
        metrics["eta_s"] = remaining * window.seconds_per_step()
        record = {"step": self.step, "epoch": self.epoch + self.batch_in_epoch / max(len(self.loader), 1)}
        record.update(metrics)
        self.last_metrics = dict(metrics)
        if self.step % cfg.logging.interval_steps == 0 or self.step == self.total_steps:
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()
            log_interval(metrics, epoch=self.epoch + 1, epochs=cfg.training.epochs, step=self.step, total_steps=self.total_steps,
                         rss_mb=peak_rss_mb())
            window.reset()
        self._hook("hjepa_step_end", step=self.step, metrics=metrics)

    def _end_epoch(self, metrics: dict[str, float]) -> None:
        cfg = self.config
        ev = cfg.evaluation
        metrics.update(self.health.rankme())
        if ev.online is not None and ev.online_every_epochs and self.epoch % ev.online_every_epochs == 0 and self.dist.is_main:
            metrics.update(self.online_evaluation())
        self.last_metrics = dict(metrics)
        self._check_collapse(collapse_problem(metrics, self._health_widths, cfg.logging.collapse_rank_fraction,
                                              cfg.evaluation.representation))
        summary = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith(("loss", "online/", "health/")))
        log.info("epoch %d/%d done: %s", self.epoch, cfg.training.epochs, summary)
        if self.early_stopping is not None and self.dist.is_main and self.early_stopping.update(metrics, self.epoch):
            self.request_stop(self.early_stopping.reason())
        self.healthy_checkpoint = self.save("latest.pth", "latest")
        if self.epoch % cfg.checkpoint.every_epochs == 0:
            self.save(f"checkpoint_epoch_{self.epoch}.pth", "periodic")
        best = new_best(self.best, metrics, cfg.checkpoint.best_metric, self.epoch, cfg.evaluation.representation)
        if best is not None:
            self.best = best
            self.save("best_model.pth", "best")
        self._hook("hjepa_epoch_end", epoch=self.epoch, metrics=metrics)
        if self.dist.enabled:
            torch.distributed.barrier()

    def online_evaluation(self) -> dict[str, float]:
        """Run the online evaluator on labelled subsets; figures are prefixed ``online/``."""
        if self._online is None:
            self._online = OnlineEvaluation(self.config, self.dataset, self.registry, self.resolved, self.ctx)
        with eager(self.compiled):
            out = self._online(self.model, device=self.device, amp_dtype=self.amp_dtype)
        if out is None:
            return {}
        self._hook("hjepa_evaluation_end", results=out)
        return out
