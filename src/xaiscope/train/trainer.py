"""``xs.train``: train a classifier with (stratified k-fold) validation, keep the best epoch of
each fold, save the best model to the registry."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiscope.data.dataset import ImageDataset
from xaiscope.errors import DatasetError, ParameterError
from xaiscope.models.torch_model import TorchModel
from xaiscope.train.archs import build_arch
from xaiscope.train.augment import shift_flip
from xaiscope.train.metrics import accuracy, macro_f1
from xaiscope.train.result import FoldResult, TrainResult

EpochCallback = Callable[[int, int, dict[str, float]], None]


def train(
    arch: str,
    data: ImageDataset | str | os.PathLike[str],
    *,
    epochs: int,
    folds: int = 1,
    augment: bool = True,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.2,
    name: str | None = None,
    save: bool = True,
    models_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    out: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = False,
    arch_kwargs: dict[str, Any] | None = None,
    shift: float = 0.1,
    progress: bool = True,
    callback: EpochCallback | None = None,
) -> TrainResult:
    """Train ``arch`` on ``data`` with Adam and cross-entropy; returns a :class:`TrainResult`.

    ``arch``: ``"cifar10_cnn"``, ``"small_cnn"``, ``"tiny_vit"`` or ``"timm:NAME"`` (a new
    head; ``pretrained=True`` downloads ImageNet weights where online). ``data``: an
    :class:`~xaiscope.data.ImageDataset` or a spec (``"shapes"``, ``"folder:PATH"``,
    ``"cifar10:PATH"``). Inputs are normalised with the data's per-channel mean/std.

    ``folds=1`` trains once on a stratified split holding out ``val_fraction``;
    ``folds=k`` runs stratified k-fold cross-validation (scikit-learn's
    ``StratifiedKFold``, shuffled with ``seed``). In every fold each epoch is validated
    and the epoch with the best validation accuracy is kept. ``augment`` shifts images by up
    to ``shift`` (10 %) of their size and flips half of them left-right.

    The kept model of the best fold goes to the model registry as ``name`` (default
    ``<arch>-<data name>``) unless ``save=False``; an existing entry of that name is an
    error before training starts, unless ``overwrite=True``. ``out`` writes the curves
    (PNG) and history (JSON) there. With the same ``seed`` on CPU, two runs give the same
    weights. Ctrl-C stops training and keeps (and saves) the best epochs so far, with
    ``result.interrupted`` set. ``callback(fold, epoch, row)`` runs after every epoch.
    """
    dev = torch.device(device) if device is not None else _default_device()
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        # seeding and building models use the global generators: leave the caller's alone
        return _train(
            arch, data, epochs=epochs, folds=folds, augment=augment, batch_size=batch_size,
            lr=lr, seed=seed, val_fraction=val_fraction, name=name, save=save,
            models_dir=models_dir, overwrite=overwrite, out=out, device=dev,
            pretrained=pretrained, arch_kwargs=arch_kwargs, shift=shift, progress=progress,
            callback=callback,
        )  # fmt: skip


def _train(
    arch: str,
    data: ImageDataset | str | os.PathLike[str],
    *,
    epochs: int,
    folds: int,
    augment: bool,
    batch_size: int,
    lr: float,
    seed: int,
    val_fraction: float,
    name: str | None,
    save: bool,
    models_dir: str | os.PathLike[str] | None,
    overwrite: bool,
    out: str | os.PathLike[str] | None,
    device: str | torch.device | None,
    pretrained: bool,
    arch_kwargs: dict[str, Any] | None,
    shift: float,
    progress: bool,
    callback: EpochCallback | None,
) -> TrainResult:
    from xaiscope.data.datasets import from_spec
    from xaiscope.models import registry_store

    _check_params(epochs, folds, batch_size, lr, val_fraction, shift)
    dataset = data if isinstance(data, ImageDataset) else from_spec(data, seed=seed)
    entry_name = name or default_name(arch, dataset.name)
    if save:  # refuse before spending minutes training
        registry_store.check_name_free(entry_name, models_dir, overwrite=overwrite)
    splits = _splits(dataset.labels, dataset.classes, folds, val_fraction, seed)
    dev = torch.device(device) if device is not None else _default_device()
    size = dataset.image_size
    kwargs = dict(arch_kwargs or {})
    # built once up front: a bad arch or option fails now, not after loading the folds
    probe = build_arch(arch, dataset.num_classes, size, pretrained=pretrained, **kwargs)
    mean, std = _normalisation(probe, dataset, pretrained)
    del probe

    images = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(dataset.labels)
    norm = (
        torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(dev),
        torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(dev),
    )
    results: list[FoldResult] = []
    interrupted = False
    start = time.perf_counter()
    for k, (tr, va) in enumerate(splits, start=1):
        fold_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        fold: _Fold | None = None
        # a fixed global seed per fold makes initialisation and dropout repeatable (CUDA
        # generators included: manual_seed seeds them all)
        torch.manual_seed(fold_seed)
        try:
            module = build_arch(arch, dataset.num_classes, size, pretrained=pretrained, **kwargs)
            # channels-last runs the CPU convolutions about 15 % faster; same results
            module = module.to(dev).to(memory_format=torch.channels_last)
            fold = _Fold(
                k, len(splits), module, images, labels, tr, va, norm, dev,
                num_classes=dataset.num_classes, epochs=epochs, batch_size=batch_size,
                lr=lr, augment=augment, shift=shift, seed=fold_seed, progress=progress,
                callback=callback,
            )  # fmt: skip
            fold.run()
        except KeyboardInterrupt:
            interrupted = True
        if fold is not None and fold.history:
            results.append(fold.result(interrupted))
        if interrupted:
            break
    seconds = time.perf_counter() - start
    if not results:  # stopped before any epoch finished: nothing worth keeping
        raise KeyboardInterrupt

    best_fold = max(results, key=lambda f: (f.best["val_acc"], -f.best["val_loss"])).fold
    model = _as_model(arch, kwargs, dataset, results[best_fold - 1], mean, std, dev, entry_name)
    config = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "pretrained": pretrained,
        "epochs": epochs,
        "folds": folds,
        "augment": augment,
        "shift": shift,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "Adam",
        "seed": seed,
        "val_fraction": val_fraction if folds == 1 else 1.0 / folds,
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "data": {
            "name": dataset.name,
            "n_images": len(dataset),
            "image_size": list(size),
            "class_counts": dataset.class_counts(),
            "skipped_files": len(dataset.skipped),
            "source": dataset.source,
        },
    }
    result = TrainResult(
        arch=arch,
        classes=list(dataset.classes),
        folds=results,
        best_fold=best_fold,
        model=model,
        config=config,
        seconds=seconds,
        interrupted=interrupted,
        name=entry_name if save else None,
        arch_kwargs=kwargs,
    )
    if save:
        best = results[best_fold - 1]
        result.path = registry_store.save_entry(
            entry_name,
            model.module,
            arch=arch,
            arch_kwargs=kwargs,
            labels=dataset.classes,
            input_size=size,
            mean=mean,
            std=std,
            extra={
                "data": config["data"],
                "training": {
                    **{k: v for k, v in config.items() if k not in ("data", "arch", "arch_kwargs")},
                    "best_fold": best_fold,
                    "best_epoch": best.best_epoch,
                    "val_accuracy": best.best["val_acc"],
                    "val_loss": best.best["val_loss"],
                    "val_f1": best.best["val_f1"],
                    "mean_val_accuracy": result.mean_val_accuracy,
                    "interrupted": interrupted,
                    "seconds": round(seconds, 2),
                },
                "summary": result.summary(),
                "history": result.to_dict()["history"],
            },
            models_dir_path=models_dir,
            overwrite=overwrite,
        )
    if out is not None:
        result.save(out)
    return result


# --------------------------------------------------------------------------- one fold
class _Fold:
    """The training loop of one fold; ``history`` and ``best_state`` survive Ctrl-C."""

    def __init__(
        self,
        k: int,
        n_folds: int,
        module: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        norm: tuple[torch.Tensor, torch.Tensor],
        device: torch.device,
        *,
        num_classes: int,
        epochs: int,
        batch_size: int,
        lr: float,
        augment: bool,
        shift: float,
        seed: int,
        progress: bool,
        callback: EpochCallback | None,
    ) -> None:
        self.k, self.n_folds = k, n_folds
        self.module = module
        self.images, self.labels = images, labels
        self.train_idx = torch.from_numpy(np.asarray(train_idx, dtype=np.int64))
        self.val_idx = torch.from_numpy(np.asarray(val_idx, dtype=np.int64))
        self.mean, self.std = norm
        self.device = device
        self.num_classes = num_classes
        self.epochs, self.batch_size = epochs, batch_size
        self.augment, self.shift = augment, shift
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        self.progress, self.callback = progress, callback
        self.history: list[dict[str, float]] = []
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}

    def _inputs(self, idx: torch.Tensor, augment: bool) -> torch.Tensor:
        x = self.images[idx].to(self.device).float().div_(255.0)
        if augment:
            x = shift_flip(x, self.generator, shift=self.shift)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def run(self) -> None:
        from tqdm.auto import tqdm

        n = len(self.train_idx)
        steps = n // self.batch_size + (n % self.batch_size > 1)
        desc = f"fold {self.k}/{self.n_folds}" if self.n_folds > 1 else "training"
        with tqdm(
            total=self.epochs * steps, desc=desc, unit="batch", disable=not self.progress,
            dynamic_ncols=True, leave=True,
        ) as bar:  # fmt: skip
            for epoch in range(1, self.epochs + 1):
                t0 = time.perf_counter()
                train_stats = self._train_epoch(bar)
                val_stats = self._evaluate(self.val_idx)
                row = {
                    "epoch": float(epoch),
                    "train_acc": train_stats[0],
                    "val_acc": val_stats[0],
                    "train_loss": train_stats[1],
                    "val_loss": val_stats[1],
                    "train_f1": train_stats[2],
                    "val_f1": val_stats[2],
                    "seconds": time.perf_counter() - t0,
                }
                if not all(math.isfinite(row[m]) for m in ("train_loss", "val_loss")):
                    raise ParameterError(
                        f"training diverged at fold {self.k}, epoch {epoch} (loss is not "
                        "finite); lower the learning rate (--lr)"
                    )
                self._record(row)
                bar.set_postfix(
                    epoch=epoch,
                    val_acc=f"{row['val_acc']:.3f}",
                    best=f"{self.history[self.best_epoch - 1]['val_acc']:.3f}",
                )
                if self.callback is not None:
                    self.callback(self.k, epoch, dict(row))

    def _record(self, row: dict[str, float]) -> None:
        self.history.append(row)
        best = self.history[self.best_epoch - 1] if self.best_epoch else None
        if best is None or (row["val_acc"], -row["val_loss"]) > (
            best["val_acc"],
            -best["val_loss"],
        ):
            self.best_epoch = len(self.history)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()
            }

    def _train_epoch(self, bar: Any) -> tuple[float, float, float]:
        self.module.train()
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator)]
        if len(order) % self.batch_size == 1 and len(order) > 1:
            # a last batch of one image breaks batch norm on 1x1 maps: leave it to next epoch
            order = order[:-1]
        total_loss, preds, truth = 0.0, [], []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self._inputs(idx, self.augment)
            y = self.labels[idx].to(self.device)
            logits = self.module(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += float(loss.detach()) * len(idx)
            preds.append(logits.detach().argmax(1).cpu())
            truth.append(y.cpu())
            bar.update(1)
        p, t = torch.cat(preds).numpy(), torch.cat(truth).numpy()
        return accuracy(t, p), total_loss / len(t), macro_f1(t, p, self.num_classes)

    def _evaluate(self, indices: torch.Tensor) -> tuple[float, float, float]:
        self.module.eval()
        total_loss, preds = 0.0, []
        with torch.no_grad():
            for start in range(0, len(indices), 256):
                idx = indices[start : start + 256]
                logits = self.module(self._inputs(idx, False))
                y = self.labels[idx].to(self.device)
                total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
                preds.append(logits.argmax(1).cpu())
        p = torch.cat(preds).numpy()
        t = self.labels[indices].numpy()
        return accuracy(t, p), total_loss / len(t), macro_f1(t, p, self.num_classes)

    def result(self, interrupted: bool) -> FoldResult:
        return FoldResult(
            fold=self.k,
            history=copy.deepcopy(self.history),
            best_epoch=self.best_epoch,
            train_indices=self.train_idx.numpy().copy(),
            val_indices=self.val_idx.numpy().copy(),
            state_dict=self.best_state,
            interrupted=interrupted and len(self.history) < self.epochs,
        )


# --------------------------------------------------------------------------- helpers
def _check_params(
    epochs: int, folds: int, batch_size: int, lr: float, val_fraction: float, shift: float
) -> None:
    def positive_int(value: Any, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ParameterError(f"{what} must be a positive integer, got {value!r}")

    positive_int(epochs, "epochs")
    positive_int(folds, "folds")
    positive_int(batch_size, "batch_size")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"lr must be a positive number, got {lr!r}")
    if folds == 1 and not 0 < val_fraction < 1:
        raise ParameterError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    if not 0 <= shift < 0.5:
        raise ParameterError(f"shift must lie in [0, 0.5), got {shift!r}")


def _splits(
    labels: np.ndarray, classes: list[str], folds: int, val_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, validation) index pairs: k folds, or one holdout split."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    counts = np.bincount(labels, minlength=len(classes))
    present = counts > 0
    if present.sum() < 2:
        raise DatasetError("training needs images of at least two classes")
    smallest = int(np.argmin(np.where(present, counts, np.iinfo(np.int64).max)))
    if folds > 1:
        if counts[smallest] < folds:
            raise DatasetError(
                f"folds={folds} is more than the {counts[smallest]} image(s) of class "
                f"{classes[smallest]!r}: every fold needs each class in its validation set; "
                f"use at most {counts[smallest]} folds"
            )
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in skf.split(np.zeros(len(labels)), labels)]
    if counts[smallest] < 2:
        raise DatasetError(
            f"class {classes[smallest]!r} has only 1 image: a validation split needs at "
            "least 2 per class"
        )
    n_val = int(math.ceil(val_fraction * len(labels)))
    n_present = int(present.sum())
    if n_val < n_present or len(labels) - n_val < n_present:
        raise DatasetError(
            f"{len(labels)} images are too few to hold out {val_fraction:.0%} for validation "
            f"with every one of {n_present} classes on both sides"
        )
    tr, va = train_test_split(
        np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=seed
    )
    return [(np.sort(tr), np.sort(va))]


def default_name(arch: str, data_name: str) -> str:
    """The registry name a run gets without ``name=``: ``<arch>-<data name>``, made safe."""
    import re

    raw = f"{arch.replace(':', '-')}-{data_name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")[:100] or "model"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _normalisation(
    module: nn.Module, data: ImageDataset, pretrained: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data's own statistics, or the pretrained weights' (their inputs must match)."""
    if pretrained:
        cfg = dict(getattr(module, "pretrained_cfg", {}) or {})
        if "mean" in cfg and "std" in cfg:
            return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
    assert data.mean is not None and data.std is not None
    return tuple(data.mean), tuple(data.std)


def _as_model(
    arch: str,
    kwargs: dict[str, Any],
    data: ImageDataset,
    fold: FoldResult,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    name: str,
) -> TorchModel:

    module = build_arch(arch, data.num_classes, data.image_size, **kwargs)
    module.load_state_dict(fold.state_dict)
    return TorchModel(
        module,
        labels=data.classes,
        input_size=data.image_size,
        mean=mean,
        std=std,
        device=device,
        name=name,
    )
