"""What a stage trains on: the frozen body's stored features (a head stage) or images (in memory when they fit,
on the GPU when they fit there, else decoded per epoch by loader workers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from graft.core import distributed as dist
from graft.core.config import TrainConfig
from graft.core.device import autocast_dtype
from graft.core.errors import ConfigError
from graft.features.similarity import Hashes, leak_candidates


class StageData:
    """The two kinds of training data, each built once on first use: the frozen body's features (for a head
    stage) and images (decoded once and kept in memory when they fit, else decoded per epoch)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: Any,
        dataset: Any,
        preprocess: Any,
        device: torch.device,
        generator: torch.Generator,
        cache_key: dict[str, Any] | None,
        log: Callable[[str], None],
        *,
        check_leakage: bool = True,
        precision: str = "auto",
    ) -> None:
        from graft.core.loaders import default_workers

        self.cfg, self.model, self.dataset, self.preprocess = cfg, model, dataset, preprocess
        self.device, self.generator, self.cache_key, self.log = device, generator, cache_key, log
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        self._features: tuple[Any, Any] | None = None
        self._images: tuple[Any, Any] | None = None
        #: val images with a near-copy in train, found on the features of the first head stage (None: not looked)
        self.leakage: list[dict[str, Any]] | None = None
        self.check_leakage = check_leakage
        #: the training steps' precision (resolved ``--precision``); the frozen body's torch pass runs in it too, and
        #: its stored rows are keyed by it where it is not inference's (:func:`graft.features.store.store_key`)
        self.precision = precision
        same = autocast_dtype(device, precision) == autocast_dtype(device)
        self.feature_precision = "auto" if same else precision

    def step_precision(self, on_features: bool) -> str:
        """The precision of a stage's training steps (and its lr range test): the run's, except for a head on
        stored features, which keeps inference's (a few hundred KFLOPs a step: bf16 would only add casts)."""
        return "auto" if on_features else self.precision

    def features(self) -> tuple[Any, Any]:
        from graft.core.loaders import inference_loader, train_loader

        if self._features is None:
            cfg, ds = self.cfg, self.dataset
            tensors = {}
            for split, views in (("train", range(cfg.feature_views + 1)), ("val", range(1))):
                samples = getattr(ds, split)
                args = (self.model, samples, self.preprocess, self.cache_key, cfg, self.device, self.workers, self.log,
                        self.feature_precision)  # fmt: skip
                tensors[split] = (
                    torch.cat([_features(*args, split, view, ds.decoded if view == 0 else None) for view in views]),
                    torch.tensor([s.label for s in samples] * len(views)),
                )
            if self.check_leakage:
                self.leakage = leakage(ds, tensors["train"][0][: len(ds.train)], tensors["val"][0], self.log)
            self._features = (
                train_loader(
                    torch.utils.data.TensorDataset(*tensors["train"]),
                    batch_size=cfg.batch_size,
                    workers=0,
                    generator=self.generator,
                    weights=self.sample_weights(tensors["train"][1]),
                ),
                inference_loader(torch.utils.data.TensorDataset(*tensors["val"]), batch_size=cfg.batch_size, workers=0),
            )
        return self._features

    def sample_weights(self, labels: Any) -> torch.Tensor | None:
        """Per-sample weights of class-balanced sampling (``--balance sampler``), else None (shuffling)."""
        from graft.training.balance import sample_weights

        return sample_weights(labels, len(self.dataset.classes)) if self.cfg.balance == "sampler" else None

    def images(self) -> tuple[Any, Any]:
        """The (train, val) image batches of image stages (MixUp/CutMix on the train batches when asked)."""
        from graft.data.augment import MixedBatches, batch_mix

        if self._images is None:
            if getattr(self.dataset, "label_sets", None) is not None and (self.cfg.mixup or self.cfg.cutmix):
                raise ConfigError("--mixup and --cutmix mix single labels; leave them out for a multi-label table")
            train, val = self._image_loaders()
            mix = batch_mix(self.cfg.mixup, self.cfg.cutmix, len(self.dataset.classes))
            self._images = (MixedBatches(train, mix) if mix else train), val
        return self._images

    def _image_loaders(self) -> tuple[Any, Any]:
        from graft.core.loaders import inference_loader, train_loader
        from graft.core.preprocess import eval_crop, eval_transform, normalize, resize_shorter, train_transform
        from graft.data.datasets import ImageDataset, MemoryImageDataset, available_memory, estimated_decoded_bytes
        from graft.data.device import DeviceBatches, fits_on_device

        cfg, p, ds = self.cfg, self.preprocess, self.dataset
        keep = round(p.resize_size * 1.25)  # room for RandomResizedCrop without upsampling most crops
        need = estimated_decoded_bytes(ds.train, keep) + len(ds.val) * 3 * p.input_size**2
        # augmented on the GPU (graft.data.device); DDP ranks shard DataLoaders instead
        on_gpu = fits_on_device(need, self.device) and not dist.is_distributed() and self._gpu_policy()
        policy = train_transform(p, cfg.augment, cfg.random_erasing)
        weights = self.sample_weights([s.label for s in ds.train])
        if on_gpu or need < min(4 << 30, available_memory() * 0.3):
            start = time.perf_counter()
            train = MemoryImageDataset(
                ds.train,
                prepare=resize_shorter(keep, p.interpolation),
                transform=None if on_gpu else policy,
                draft=keep,
            )
            val = MemoryImageDataset(
                ds.val,
                prepare=eval_crop(p),
                transform=None if on_gpu else normalize(p),
                draft=p.resize_size,
                decoded=ds.decoded,
            )
            self.log(
                f"decoded {len(train) + len(val)} images into {'GPU ' if on_gpu else ''}memory "
                f"({(train.nbytes + val.nbytes) / 2**20:.0f} MiB, {time.perf_counter() - start:.1f}s)"
            )
            if on_gpu:
                ds.decoded.clear()
                return tuple(
                    DeviceBatches(
                        part.images,
                        [s.label for s in part.samples],
                        preprocess=p,
                        batch_size=cfg.batch_size,
                        device=self.device,
                        augment=augment,
                        generator=self.generator,
                        weights=weights if augment else None,
                    )
                    for part, augment in ((train, True), (val, False))
                )
            workers = 0  # only crops and flips remain per epoch: cheaper in-process than in workers
        else:
            train = ImageDataset(ds.train, policy, draft=p.resize_size)
            val = ImageDataset(ds.val, eval_transform(p), draft=p.resize_size)
            workers = self.workers
        ds.decoded.clear()  # what the scan kept and no stage took
        return dist.shard_loaders(  # under torchrun: each rank its share
            train_loader(train, batch_size=cfg.batch_size, workers=workers, generator=self.generator, weights=weights),
            inference_loader(val, batch_size=cfg.batch_size, workers=workers),
        )

    def _gpu_policy(self) -> bool:
        """Whether the GPU path (crop and flip only) does what the options ask; otherwise say that the policy runs
        on the CPU loader. MixUp/CutMix act on whole batches and run on the GPU path as well."""
        if self.cfg.augment == "standard" and not self.cfg.random_erasing:
            return True
        if self.device.type == "cuda":
            self.log(
                f"--augment {self.cfg.augment} / --random-erasing {self.cfg.random_erasing}: augmentation runs on the "
                "CPU loader (the GPU-resident path does crop and flip only)"
            )
        return False


def _features(
    model: Any,
    samples: Any,
    preprocess: Any,
    cache_key: dict[str, Any] | None,
    cfg: TrainConfig,
    device: torch.device,
    workers: int,
    log: Callable[[str], None],
    precision: str,
    split: str,
    view: int = 0,
    decoded: Any = None,
) -> torch.Tensor:
    """The frozen body's features of ``samples``: from the on-disk store when the starting weights are known
    (random weights differ per seed, so they are not stored)."""
    from graft.features.store import cached_features, extract_features

    name = f"{split} features" + (f" (view {view})" if view else "")
    kwargs = {
        "device": device,
        "batch_size": cfg.batch_size,
        "workers": workers,
        "desc": name,
        "view": view,
        "decoded": decoded,
        "augment": cfg.augment,
        "precision": precision,
    }
    if cache_key is None:
        return dist.sharded(extract_features)(model.body, samples, preprocess, **kwargs)
    start = time.perf_counter()
    # under torchrun: the ranks compute shares of the missing rows, rank 0 stores them all, the others wait for it
    extract, write = dist.sharded(extract_features), dist.is_main()
    feats, computed = cached_features(
        model.body, samples, preprocess, cache_key, extract=extract, write=write, **kwargs
    )
    dist.barrier()
    seconds = time.perf_counter() - start
    log(f"{name}: {len(samples) - computed} from cache, {computed} computed ({seconds:.1f}s)")
    return feats


def leakage(dataset: Any, train: torch.Tensor, val: torch.Tensor, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Val images with a copy in train (graft doctor's rule: pairs proposed by the features just computed and the
    hashes the scan took, each checked by its pixels); warns when there are any."""
    from graft.features.copies import COPY, verify

    m, n_train = dataset.measures, len(dataset.train)
    samples = dataset.train + dataset.val
    hashes = None
    if all(s.path in m for s in samples):
        h = Hashes.of([m[s.path]["phash"] for s in samples], [m[s.path]["phash_flip"] for s in samples])
        hashes = (h.take(range(n_train, len(samples))), h.take(range(n_train)))
    proposed = leak_candidates(train, val, hashes=hashes)
    paths = [s.path for s in dataset.val] + [s.path for s in dataset.train]
    pairs = zip(proposed.a.tolist(), (proposed.b + len(dataset.val)).tolist(), strict=True)
    copies: dict[int, tuple[int, float]] = {}
    for i, v in enumerate(verify(paths, pairs, mirrored=proposed.mirrored)):
        a = int(proposed.a[i])
        if v.kind == COPY and a not in copies:  # proposals come most similar first: the closest copy
            copies[a] = (int(proposed.b[i]), float(proposed.sims[i]))
    if copies:
        log(
            f"warning: {len(copies)} of {len(val)} val images have a near-copy in train: the val accuracy is "
            f"optimistic (graft doctor {dataset.report.table or dataset.report.root} lists them)"
        )
    split = dataset.split_dict()
    return [
        {"val": split["val"][v], "train": split["train"][t], "similarity": round(s, 4)}
        for v, (t, s) in sorted(copies.items())
    ]
