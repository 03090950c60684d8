"""``make demo``: train mobilenet_v2 (frozen) on the tutorial's ants/bees data and predict a few val images.

The data comes from ``$GRAFT_DATA``, else ``../shared/data/hymenoptera_data`` beside the checkout, else the
tutorial's official zip (only when the network allows; its content is checked against a known digest).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from graft.core.errors import DataError

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
# ../shared/data beside the checkout: graft/commands/demo.py -> parents[2] is the checkout, parents[3] beside it
SHARED_HYMENOPTERA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera_data"
# sha256 of the sorted lines "<relative path> <sha256 of the file>" of the 398 files the tutorial ships.
HYMENOPTERA_MANIFEST_SHA256 = "15d89271f257b89832a79a665d92fea577411e875ab6be14222a571af4b2b359"


def manifest_sha256(root: Path) -> str:
    """Digest of a folder's content: every file's relative path and sha256, sorted."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{path.relative_to(root).as_posix()} {digest}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def hymenoptera(cache: Path | None = None) -> Path:
    """Path of the ants/bees dataset, found locally or downloaded (verified) into ``cache``."""
    env = os.environ.get("GRAFT_DATA")
    if env:
        if not Path(env).is_dir():
            raise DataError(f"GRAFT_DATA={env} is not a folder; point it at hymenoptera_data or unset it")
        return Path(env)
    shared = SHARED_HYMENOPTERA
    if shared.is_dir():
        return shared
    from platformdirs import user_cache_dir

    cache = cache or Path(user_cache_dir("graft")) / "data"
    target = cache / "hymenoptera_data"
    if target.is_dir():
        return target
    from graft.models.weights import network_allows

    if not network_allows(HYMENOPTERA_URL):
        raise DataError(
            f"the demo dataset is not here: set GRAFT_DATA to a hymenoptera_data folder, or place it at {shared}; "
            f"it cannot be downloaded from {HYMENOPTERA_URL} (no network)"
        )
    import torch.hub

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = Path(tmp) / "hymenoptera_data.zip"
        torch.hub.download_url_to_file(HYMENOPTERA_URL, str(archive))
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        extracted = Path(tmp) / "hymenoptera_data"
        if manifest_sha256(extracted) != HYMENOPTERA_MANIFEST_SHA256:
            raise DataError(f"the download from {HYMENOPTERA_URL} does not have the expected content; not used")
        extracted.rename(target)
    return target


def main() -> int:
    from graft.commands.train import train
    from graft.core.errors import GraftError
    from graft.inference.loading import load

    try:
        data = hymenoptera()
        print(f"data: {data}")
        run = train(data, arch="mobilenet_v2", mode="freeze", epochs=10, name="demo", exist_ok=True)
        clf = load(run.run_dir)
        val = data / "val"
        samples = [sorted((val / c).iterdir())[0] for c in ("ants", "bees")] + [val / "bees/72100438_73de9f17af.jpg"]
        print(f"\nbest val accuracy: {run.best_val_acc:.4f} (epoch {run.metrics['best_epoch']})")
        for path, preds in zip(samples, clf.predict(samples, top_k=2), strict=True):
            shown = ", ".join(f"{p.label} {p.probability:.3f}" for p in preds)
            print(f"  {path.relative_to(data)}: {shown}")
        print(f"\nrun directory: {run.run_dir}")
        print(f"try: graft predict {run.run_dir} {samples[-1]}")
    except GraftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
