"""What :func:`xaiscope.train` returns: per-fold histories, the kept epochs, the summary
table and the accuracy/loss curves."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xaiscope.models.torch_model import TorchModel

#: The per-epoch metrics in every history row (plus ``epoch`` and ``seconds``).
METRICS = ("train_acc", "val_acc", "train_loss", "val_loss", "train_f1", "val_f1")


@dataclass
class FoldResult:
    """One fold: its per-epoch ``history`` and the weights of its best epoch.

    ``history`` rows hold ``epoch`` (1-based), ``train_acc``, ``train_loss``, ``train_f1``
    (over the epoch's augmented training batches, in training mode, as Keras reports them),
    ``val_acc``, ``val_loss``, ``val_f1`` (on the held-out images, eval mode) and
    ``seconds``. ``best_epoch`` is the epoch with the highest validation accuracy (ties:
    lower validation loss, then earlier); ``state_dict`` holds its weights (CPU tensors).
    ``train_indices``/``val_indices`` index the dataset the run was given.
    """

    fold: int
    history: list[dict[str, float]]
    best_epoch: int
    train_indices: np.ndarray = field(repr=False)
    val_indices: np.ndarray = field(repr=False)
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    interrupted: bool = False

    @property
    def n_train(self) -> int:
        return len(self.train_indices)

    @property
    def n_val(self) -> int:
        return len(self.val_indices)

    @property
    def best(self) -> dict[str, float]:
        """The history row of the kept epoch."""
        return self.history[self.best_epoch - 1]

    def stats(self) -> dict[str, float]:
        """max, min and mean over the epochs of each metric, plus the kept epoch's values."""
        out: dict[str, float] = {
            "fold": self.fold,
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
        }
        for m in METRICS:
            values = np.array([row[m] for row in self.history], dtype=np.float64)
            out[m] = self.best[m]
            out[f"{m}_max"] = float(values.max())
            out[f"{m}_min"] = float(values.min())
            out[f"{m}_mean"] = float(values.mean())
        return out


@dataclass
class TrainResult:
    """The outcome of :func:`xaiscope.train`.

    ``folds`` (one :class:`FoldResult` each), ``best_fold`` (1-based: the fold whose kept
    epoch has the highest validation accuracy), ``model`` (that fold's kept weights as a
    ready ``TorchModel``), ``name``/``path`` (registry entry, or None when not saved),
    ``interrupted`` (Ctrl-C: the folds and epochs done so far are kept), ``seconds``
    (wall time of training), ``config`` (arguments and data description).
    """

    arch: str
    classes: list[str]
    folds: list[FoldResult]
    best_fold: int
    model: TorchModel
    config: dict[str, Any]
    seconds: float
    interrupted: bool = False
    name: str | None = None
    path: Path | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- numbers
    def summary(self) -> dict[str, Any]:
        """``{"folds": [row per fold], "mean": row, "std": row}``: every metric's value at
        the kept epoch and its max/min/mean over epochs (see :meth:`FoldResult.stats`);
        ``mean``/``std`` are taken across folds."""
        rows = [f.stats() for f in self.folds]
        keys = [k for k in rows[0] if k != "fold"]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        std = {k: float(np.std([r[k] for r in rows])) for k in keys}
        return {"folds": rows, "mean": mean, "std": std}

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy of the kept model (best epoch of the best fold)."""
        return float(self.folds[self.best_fold - 1].best["val_acc"])

    @property
    def mean_val_accuracy(self) -> float:
        """Mean over folds of each fold's kept-epoch validation accuracy."""
        return float(np.mean([f.best["val_acc"] for f in self.folds]))

    def table(self) -> str:
        """The per-fold summary as text: the kept epoch's metrics, then max/mean (min/mean
        for losses) over the epochs of each fold, with mean and std across folds."""
        summary = self.summary()
        rows = [(str(r["fold"]), r) for r in summary["folds"]]
        if len(rows) > 1:
            rows += [("mean", summary["mean"]), ("std", summary["std"])]

        def pct(v: float) -> str:
            return f"{v:.1%}"

        def num(v: float) -> str:
            return f"{v:.3f}"

        head1 = ["fold", "best epoch", "train acc", "val acc", "train loss", "val loss",
                 "train F1", "val F1"]  # fmt: skip
        body1 = []
        for label, r in rows:
            epoch = (
                f"{int(r['best_epoch'])}/{int(r['epochs'])}" if label not in ("mean", "std") else ""
            )
            body1.append(
                [
                    label,
                    epoch,
                    pct(r["train_acc"]),
                    pct(r["val_acc"]),
                    num(r["train_loss"]),
                    num(r["val_loss"]),
                    num(r["train_f1"]),
                    num(r["val_f1"]),
                ]  # fmt: skip
            )
        head2 = ["fold", "train acc", "val acc", "train loss", "val loss", "train F1", "val F1"]
        body2 = []
        for label, r in rows:
            line = [label]
            for m in METRICS:
                hi = "min" if "loss" in m else "max"
                fmt = pct if "acc" in m else num
                line.append(f"{fmt(r[f'{m}_{hi}'])} / {fmt(r[f'{m}_mean'])}")
            body2.append(line)
        best = self.folds[self.best_fold - 1]
        title = (
            f"{self.arch}: kept fold {self.best_fold}, epoch {best.best_epoch} "
            f"(val acc {best.best['val_acc']:.1%})"
        )
        if len(self.folds) > 1:
            title += f"; mean val acc over {len(self.folds)} folds {self.mean_val_accuracy:.1%}"
        if self.interrupted:
            title += "; INTERRUPTED (epochs done so far)"
        return "\n".join(
            [
                title,
                "",
                "best epoch of each fold (the weights kept):",
                _format(head1, body1),
                "",
                "over all epochs: max / mean (min / mean for losses):",
                _format(head2, body2),
            ]
        )

    def __str__(self) -> str:
        return self.table()

    # ---------------------------------------------------------------- models
    def fold_model(self, fold: int) -> TorchModel:
        """The kept weights of ``fold`` (1-based) as a ``TorchModel`` like :attr:`model`."""
        from xaiscope.models.torch_model import TorchModel
        from xaiscope.train.archs import build_arch

        result = self.folds[fold - 1]
        module = build_arch(self.arch, len(self.classes), self.model.input_size, **self.arch_kwargs)
        module.load_state_dict(result.state_dict)
        return TorchModel(
            module,
            labels=self.classes,
            input_size=self.model.input_size,
            mean=self.model.mean.flatten().tolist(),
            std=self.model.std.flatten().tolist(),
            device=self.model.device,
            name=f"{self.name or self.arch} fold {fold}",
        )

    # ---------------------------------------------------------------- curves
    def plot(self) -> Figure:
        """Accuracy (left) and loss (right) per epoch: one colour per fold, training
        dashed, validation solid, the kept epoch circled. Never opens a window."""
        from xaiscope.train.curves import plot_history

        return plot_history(self)

    def plot_accuracy(self) -> Figure:
        """The accuracy curves alone."""
        from xaiscope.train.curves import plot_metric

        return plot_metric(self, "acc")

    def plot_loss(self) -> Figure:
        """The loss curves alone."""
        from xaiscope.train.curves import plot_metric

        return plot_metric(self, "loss")

    def save(self, out: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``accuracy.png``, ``loss.png``, ``curves.png`` and ``history.json`` (the
        summary and every fold's history) into folder ``out``; returns their paths."""
        folder = Path(os.fspath(out))
        folder.mkdir(parents=True, exist_ok=True)
        written = {}
        for key, fig in (
            ("accuracy", self.plot_accuracy()),
            ("loss", self.plot_loss()),
            ("curves", self.plot()),
        ):
            path = folder / f"{key}.png"
            fig.savefig(path, dpi=110)
            written[key] = path
        history = folder / "history.json"
        history.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        written["history"] = history
        return written

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arch, classes, config, best fold, summary and histories."""
        return {
            "arch": self.arch,
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "classes": list(self.classes),
            "best_fold": self.best_fold,
            "best_epoch": self.folds[self.best_fold - 1].best_epoch,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 2),
            "config": self.config,
            "summary": self.summary(),
            "history": [
                {"fold": f.fold, "n_train": f.n_train, "n_val": f.n_val, "epochs": f.history}
                for f in self.folds
            ],
        }


def _format(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)
