"""The training loop: epochs, accumulation, logging, checkpoints, callbacks, stops.

:class:`Trainer` owns a run from its configuration to its last checkpoint. It knows no model: the
encoder, masker, predictor, loss, dataset, evaluators and callbacks all come from plugins. One
optimizer step is :class:`~hjepa_kit.training.step.TrainStep` (masks, forward, loss, backward,
AdamW, EMA); what an epoch's figures decide (collapse, best checkpoint, early stopping) is
:class:`~hjepa_kit.training.epoch_policy.EpochPolicy`'s. docs/architecture.md maps the rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from ..build import Built, build_component, build_dataset, build_model, make_context
from .checkpoint import (
    checkpoint_space, find_latest, load_checkpoint, resume_target, save_checkpoint,
)
from .compiling import AUTO_TRAIN_MIN_STEPS, compile_for_training, eager, should_compile
from ..config import RunConfig, TrainingConfig, load_config
from ..data.loader import build_train_loader
from .distributed import (
    DistInfo, any_rank, setup_distributed, teardown_distributed, wrap_ddp,
)
from ..errors import CollapseDetected, UserError
from .epoch_policy import EpochPolicy
from .health import HealthMonitor
from .heap import HeapTrimmer
from .memory import check_run_memory
from .online import OnlineEvaluation, feature_stats
from .extension import ResumePoint, check_extendable, extend_request, plan_resume
from .optim import Schedules, make_optimizer
from .remedies import SkippedSteps, fallback_commands, loss_remedies
from ..registry import Registry
from .runlock import RunLock
from .runlog import LogWindow, close_run_log, log_interval, log_run_start, open_metrics_log, open_run_outputs
from ..runtime import autocast_dtype, peak_rss_mb, resolve_device, seed_everything
from .signals import Interrupt
from .step import TrainStep
from .state import TrainResult, resolved_config_text, restore_training_state, training_state, write_resolved_config
from ..process import apply_cpu_defaults
from ..threads import configure_threads

__all__ = ["Trainer", "TrainResult"]

log = logging.getLogger("hjepa_kit")


class Trainer:
    """Runs H-JEPA pretraining for one configuration.

    Args:
        config: a :class:`~hjepa_kit.config.RunConfig`, a YAML path or a mapping.
        plugins: extra plugin objects for this run only (their hooks and components).
        registry: an existing registry (``plugins`` are added to it).
        source: the configuration's file name, for messages.
        resume: a checkpoint to continue from, or ``"auto"`` for the newest of the run folder.
        console: echo log lines to stderr.
        extend_epochs: train the finished run of ``resume`` this many epochs more, with new
            schedules from where its ended (:mod:`~hjepa_kit.training.extension`).
        extend_mode: how the extension schedules the learning rate: ``tail`` (default) or ``restart``.

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
        extend_epochs: int | None = None,
        extend_mode: str | None = None,
    ) -> None:
        apply_cpu_defaults()
        self.extend = extend_request(extend_epochs, extend_mode)
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
        self.step = self.epoch = self.batch_in_epoch = self.steps_per_epoch = self.total_steps = 0
        self.compiled = False
        self.last_metrics: dict[str, float] = {}
        self.checkpoints: dict[str, Path] = {}
        self.policy = EpochPolicy(self.config)  # collapse, best checkpoint, early stopping
        self._callbacks: list[Any] = []
        self._handlers: list[logging.Handler] = []
        self.dist = DistInfo()
        self.stop_reason: str | None = None
        self.health = HealthMonitor(0)

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
        self._lock = RunLock(self.log_dir)  # one run per folder: held until _teardown_outputs
        self._handlers = open_run_outputs(self.log_dir, self.checkpoint_dir, self.console, main=self.dist.is_main, lock=self._lock)

    def _teardown_outputs(self) -> None:
        close_run_log(self._handlers)
        self._lock.release()

    def _build(self) -> None:
        cfg = self.config
        self.threads = configure_threads(cfg.training.threads)
        self.amp_dtype = autocast_dtype(cfg.training.precision, self.device)
        seed_everything(cfg.seed)
        ctx = make_context(cfg, self.device)
        self.dataset = build_dataset(self.resolved, ctx)
        if cfg.data.train_split not in self.dataset.splits:
            raise UserError(f"data.train_split: the dataset '{cfg.data.dataset.name}' has no split {cfg.data.train_split!r}; "
                            f"it has {', '.join(self.dataset.splits)}")
        self.loader = build_train_loader(
            self.dataset, cfg.data, image_size=ctx.image_size, seed=cfg.seed, device=self.device,
            rank=self.dist.rank, world_size=self.dist.world_size,
        )
        micro_batches = len(self.loader)
        if micro_batches < cfg.training.accumulation_steps:
            raise UserError(f"the training split has {micro_batches} batches of {cfg.data.batch_size}, fewer than "
                            f"training.accumulation_steps={cfg.training.accumulation_steps}: use a smaller data.batch_size")
        self.built: Built = build_model(self.resolved, ctx)
        self.ctx, self.model, self.masker, self.loss_fn = ctx, self.built.model, self.built.masker, self.built.loss
        self.optimizer = make_optimizer(self.model, cfg)
        self.steps_per_epoch = micro_batches // cfg.training.accumulation_steps
        self._schedule(cfg.training)
        self.heap = HeapTrimmer(cfg.training.release_memory_every_steps)
        self.health = HealthMonitor(cfg.logging.health_samples)
        self.skipped = SkippedSteps(cfg.training.max_skipped_steps, self.steps_per_epoch)
        self._online = OnlineEvaluation(cfg, self.dataset, self.registry, self.resolved, ctx)
        # Eager (before compiling): the estimate runs the model on one image.
        self.memory_estimate = check_run_memory(self.config, self.built, self.dataset, amp_dtype=self.amp_dtype, device=self.device)
        self.compiled = should_compile(cfg.training.compile, self.device, key="training.compile",
                                       large_enough=self.total_steps >= AUTO_TRAIN_MIN_STEPS)
        if self.compiled:
            compile_for_training(self.model, static_shapes=bool(getattr(self.masker, "static_shapes", False)))
        ddp = wrap_ddp(self.model, self.device) if self.dist.enabled else (None, None)
        self.train_step = TrainStep(self.model, self.loss_fn, self.masker, self.optimizer, self.schedules, config=cfg,
                                    device=self.device, amp_dtype=self.amp_dtype, dist=self.dist, ddp=ddp,
                                    health=self.health, epoch_batches=micro_batches)

    def _schedule(self, training: TrainingConfig) -> None:
        """Set the run's length and schedules from ``training`` (a resumed run may extend them)."""
        self.config = attrs.evolve(self.config, training=training)
        full = self.steps_per_epoch * training.epochs
        self.total_steps = min(full, training.max_steps) if training.max_steps else full
        self.schedules = Schedules.from_training(training, self.steps_per_epoch)

    def resolved_config(self) -> dict[str, Any]:
        """The configuration as plain data with every component's parameters filled in."""
        import yaml

        return yaml.safe_load(resolved_config_text(self.config, self.resolved))

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, plus what evaluation needs to rebuild the model."""
        return training_state(
            config=self.resolved_config(), ctx=self.ctx, model=self.model, loss_fn=self.loss_fn, optimizer=self.optimizer,
            epoch=self.epoch, step=self.step, batch_in_epoch=self.batch_in_epoch, world_size=self.dist.world_size,
            best=self.policy.best, early_stopping=self.policy.stopping_state(), metrics=self.last_metrics,
        )

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
        if target is not None:
            state = load_checkpoint(target, map_location=self.device)
            restored = restore_training_state(state, Path(target), model=self.model, loss_fn=self.loss_fn, optimizer=self.optimizer,
                                              world_size=self.dist.world_size, accumulation=self.config.training.accumulation_steps)
            self.epoch, self.step, self.batch_in_epoch = restored.epoch, restored.step, restored.batch_in_epoch
            self.last_metrics = restored.metrics
            self.policy.restore(restored.best, restored.early_stopping, Path(target))
            self.train_step.resume(self.step)
            groups = self.optimizer.param_groups
            point = ResumePoint(
                training=self.config.training, request=self.extend, source=self.source,
                steps_per_epoch=self.steps_per_epoch, epoch=self.epoch, step=self.step, batch_in_epoch=self.batch_in_epoch,
                lr=float(groups[0]["lr"]),
                weight_decay=next((float(g["weight_decay"]) for g in groups if g.get("apply_wd", True)), None),
            )
            self._schedule(plan_resume(point, state, Path(target)))  # an extension, or the checkpoint's extensions
            self.train_step.schedules, self.train_step.config = self.schedules, self.config

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until the configured epochs (or ``max_steps``) are done; return the result."""
        check_extendable(self.extend, self.resume_from, self.checkpoint_dir)
        self.device = resolve_device(self.config.device)
        self.dist, self.device = setup_distributed(self.device)
        self._setup_outputs()
        status = "failed"
        try:
            self._build()
            self._resume()
            if self.dist.is_main:
                write_resolved_config(self.log_dir, self.config, self.resolved)
                checkpoint_space(self.checkpoint_dir, self.model, self.optimizer, epochs=self.config.training.epochs,
                                 start_epoch=self.epoch, every_epochs=self.config.checkpoint.every_epochs,
                                 save_final=self.config.checkpoint.save_final)
            for spec_path in (p for p in self.resolved if p.startswith("callbacks[") and self.dist.is_main):
                callback = build_component(self.resolved, spec_path, self.ctx)
                self.registry.add_plugin(callback, name=f"{spec_path}:{self.resolved[spec_path][0].name}")
                self._callbacks.append(callback)
            log_run_start(self.config, model=self.model, ctx=self.ctx, device=self.device, bf16=self.amp_dtype is not None,
                          threads=self.threads, compiled=self.compiled, images=len(self.loader) * self.config.data.batch_size,
                          steps_per_epoch=self.steps_per_epoch, log_dir=self.log_dir, checkpoint_dir=self.checkpoint_dir)
            self._hook("hjepa_fit_start")
            with Interrupt() as interrupt:
                status = self._loop(interrupt)
                # Still inside: a second signal during this last write must not kill it.
                if status == "interrupted":
                    self.save("interrupted.pth", "interrupted")
                elif self.config.checkpoint.save_final:
                    self.save("final.pth", "final")
            log.info("run %s: %s after %d steps (%d epochs); peak RSS %.0f MB", self.config.name, status, self.step, self.epoch, peak_rss_mb())
            return TrainResult(status=status, log_dir=self.log_dir, checkpoint_dir=self.checkpoint_dir, checkpoints=dict(self.checkpoints),
                               metrics=dict(self.last_metrics), steps=self.step, epochs=self.epoch)
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

    def _loop(self, interrupt: Interrupt) -> str:
        cfg = self.config
        accumulation = cfg.training.accumulation_steps
        self.model.train()
        self._metrics_file = open_metrics_log(self.log_dir, main=self.dist.is_main)  # whole lines, rank 0 alone
        try:
            if (stopped := self.policy.stopped_before(self.epoch, cfg.training.epochs)) is not None:
                self.request_stop(stopped)  # a resumed run that had stopped early: its patience is still used up
            while self.epoch < cfg.training.epochs:
                whole = len(self.loader) // accumulation * accumulation  # micro-batches of whole steps
                if self.step >= self.total_steps and self.batch_in_epoch < whole:
                    return "stopped"
                if any_rank(self.stop_reason is not None, info=self.dist, device=self.device)[0]:
                    log.info("stopping at step %d: %s", self.step, self.stop_reason or "another rank asked to stop")
                    return "stopped"
                self.loader.set_epoch(self.epoch)
                if self.batch_in_epoch:
                    self.loader.skip(self.batch_in_epoch)
                sums: dict[str, float] = {}
                count = 0
                window = LogWindow()
                # Resumed after the epoch's last step (SIGTERM before its end): nothing to feed; the loader would restart.
                for images, _labels in self.loader if self.batch_in_epoch < whole else ():
                    done = self.train_step.feed(images, epoch=self.epoch, batch_index=self.batch_in_epoch)
                    self.batch_in_epoch += 1
                    window.add(images.shape[0])
                    if done is None:
                        continue
                    self.step = done.step
                    self.heap.after_step(self.step)
                    window.step()
                    for key, value in done.scheduled.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                    self._after_step(dict(done.scheduled), done.target_tokens, window)
                    # Under DDP this is an all-reduce: it is done when a line is logged, not every step.
                    if not self.dist.enabled or self.step % cfg.logging.interval_steps == 0:
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
                if self.batch_in_epoch < whole:  # the epoch did not finish
                    return "stopped"
                self.epoch += 1
                self.batch_in_epoch = 0
                epoch_metrics = self._read_device_figures(self.train_step.read_epoch())
                epoch_metrics.update({k: v / max(count, 1) for k, v in sums.items()})
                self._end_epoch(epoch_metrics)
                if self.step >= self.total_steps and self.epoch < cfg.training.epochs:
                    return "stopped"
            return "completed"
        finally:
            self._metrics_file.close()

    def _read_device_figures(self, figures: dict[str, float]) -> dict[str, float]:
        """Answer the non-finite steps among figures just read from the device (one more synchronisation)."""
        return figures | self.skipped.answer(self.train_step.non_finite(), commands=self._fallbacks,
                                             last=lambda: self.checkpoints.get("latest") or find_latest(self.checkpoint_dir))

    def _fallbacks(self, checkpoint: Path | None) -> str:
        """The usual remedies for divergence and collapse, as commands that resume from ``checkpoint``."""
        return fallback_commands(self.log_dir / "config.yaml", checkpoint, self.config.training.lr, loss_remedies(self.loss_fn))

    def _after_step(self, metrics: dict[str, float], target_tokens: torch.Tensor | None, window: LogWindow) -> None:
        cfg = self.config
        if target_tokens is not None:
            stats, collapse = feature_stats(target_tokens, cfg.logging)
            metrics.update(stats)
            # A warning or a stop, with the remedies as commands (training.on_collapse).
            self.policy.answer_collapse(collapse.reason, epoch=self.epoch + 1, step=self.step, commands=self._fallbacks)
        metrics["images_per_s"] = window.images_per_s()
        remaining = self.total_steps - self.step
        metrics["eta_s"] = remaining * window.seconds_per_step()
        record = {"step": self.step, "epoch": self.epoch + self.batch_in_epoch / max(len(self.loader), 1)}
        if self.step % cfg.logging.interval_steps == 0 or self.step == self.total_steps:
            # The loss terms and gradient norms of the interval: read from the device here only.
            metrics.update(self._read_device_figures(self.train_step.read_interval()))
            record.update(metrics)
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()
            log_interval(metrics, epoch=self.epoch + 1, epochs=cfg.training.epochs, step=self.step, total_steps=self.total_steps,
                         rss_mb=peak_rss_mb())
            window.reset()
        self.last_metrics.update(metrics)
        self._hook("hjepa_step_end", step=self.step, metrics=metrics)

    def _end_epoch(self, metrics: dict[str, float]) -> None:
        cfg, ev = self.config, self.config.evaluation
        metrics.update(self.health.rankme())
        if ev.online is not None and ev.online_every_epochs and self.epoch % ev.online_every_epochs == 0 and self.dist.is_main:
            metrics.update(self.online_evaluation())
        self.last_metrics = dict(metrics)
        decision = self.policy.decide(metrics, self.epoch, widths=self.train_step.health_widths, main=self.dist.is_main,
                                      headline=self._online.headline)
        self.policy.answer_collapse(decision.collapse, epoch=self.epoch, step=self.step, commands=self._fallbacks)
        summary = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith(("loss", "online/", "health/")))
        log.info("epoch %d/%d done: %s", self.epoch, cfg.training.epochs, summary)
        if decision.stop is not None:
            self.request_stop(decision.stop)
        if decision.best is not None:  # best_model.pth first: latest.pth never names a record whose file is missing
            self.policy.best = decision.best
            self.save("best_model.pth", "best")
        self.policy.healthy_checkpoint = self.save("latest.pth", "latest")
        if self.epoch % cfg.checkpoint.every_epochs == 0:
            self.save(f"checkpoint_epoch_{self.epoch}.pth", "periodic")
        self._hook("hjepa_epoch_end", epoch=self.epoch, metrics=metrics)
        if self.dist.enabled:
            torch.distributed.barrier()

    def online_evaluation(self) -> dict[str, float]:
        """Run the online evaluator on labelled subsets; figures are prefixed ``online/``."""
        with eager(self.compiled):
            out = self._online(self.model, device=self.device, amp_dtype=self.amp_dtype)
        if out is not None:  # None: the data has no labels or no test split
            self._hook("hjepa_evaluation_end", results=out)
        return out or {}
