"""Run logging: TensorBoard scalars plus a JSON-lines copy of every metric, in the run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from metarl.agent import CurveKind
from metarl.evaluate import curve_figure


class RunLogger:
    """A thin wrapper over TensorBoard's ``SummaryWriter`` that also appends metrics to ``metrics.jsonl``.

    Keys are namespaced (``meta/return_step_1``, ``losses/kl``, ``time/sample_s``, ``validation/...``).
    """

    def __init__(self, run_dir: Path, resume_after: int | None = None) -> None:
        # on resume, TensorBoard drops the events logged after the checkpoint (they are logged again)
        purge_step = None if resume_after is None else resume_after + 1
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self._jsonl = open(run_dir / "metrics.jsonl", "a")

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, iteration)
        record = {"iteration": iteration, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        self._jsonl.flush()

    def log_curve(
        self, iteration: int, tag: str, curve_kind: CurveKind, curve: list[float], success: list[float] | None = None
    ) -> None:
        """An adaptation curve (the return at each adaptation step or trial episode, and the success rate where the
        family defines success) as a TensorBoard figure, so that its shape can be followed across evaluations (the
        points are also scalars, through ``log``)."""
        first = curve_kind.first_point
        points = list(range(first, first + len(curve)))
        line = {"name": tag, "points": points, "mean": curve, **({} if success is None else {"success": success})}
        figure = curve_figure([line], curve_kind.axis_label, tag)
        self.writer.add_figure(f"{tag}/adaptation_curve", figure, iteration)  # closes the figure

    def close(self) -> None:
        self.writer.close()
        self._jsonl.close()
