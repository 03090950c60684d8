"""graft.core.deps: in the graft command's process, torch._dynamo deferred until something compiles, and nothing
behaves differently for it; a library import of graft never patches torch. And what the packages export: their own
names, imported on first use where they are lazy.

Each test runs in a fresh interpreter: this pytest process has long since imported the real dynamo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object last."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


TRAIN_A_HEAD = """
    import json, sys
    import torch
    from graft.core.deps import import_torchvision, dynamo_deferred, own_process
    if OWN:
        own_process()  # as the graft command does first
    tv = import_torchvision()
    from torchvision.transforms import v2
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 2)
    opt = torch.optim.AdamW(head.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
        sched.step()
    state = opt.state_dict()
    opt.load_state_dict(state)
    image = v2.Resize(4, antialias=True)(torch.zeros(3, 8, 8, dtype=torch.uint8))  # tv_tensors.wrap, disabled
    import inspect
    inspect.getmodule(inspect)  # reads __file__ of every module in sys.modules
    print(json.dumps({
        "deferred": dynamo_deferred(),
        "dynamo": type(sys.modules.get("torch._dynamo")).__name__,
        "dynamo_modules": sorted(m for m in sys.modules if m.startswith("torch._dynamo.")),
        "weights": head.weight.flatten().tolist(),
        "steps": int(state["state"][0]["step"]),
        "image": list(image.shape),
    }))
"""


def command(code: str) -> str:
    """``code`` as it runs in the graft command's process (:func:`graft.core.deps.own_process` called first)."""
    return "OWN = True\n" + textwrap.dedent(code)


def library(code: str) -> str:
    """``code`` as it runs in someone else's process that imports graft."""
    return "OWN = False\n" + textwrap.dedent(code)


def test_eager_training_and_transforms_never_import_dynamo() -> None:
    got = run(command(TRAIN_A_HEAD))
    assert got["deferred"] is True
    assert got["dynamo_modules"] == []
    assert got["steps"] == 3 and got["image"] == [3, 4, 4]


def test_deferring_changes_no_number() -> None:
    deferred = run(command(TRAIN_A_HEAD))
    real = run(command(TRAIN_A_HEAD), GRAFT_DEFER_DYNAMO="0")
    assert real["deferred"] is False  # the switch works: the real dynamo was imported
    # exactly: two interpreters on this CPU with the same threads and kernels run the same arithmetic; only the
    # import differs
    assert deferred["weights"] == real["weights"]


def test_a_library_import_never_patches_torch() -> None:
    got = run(library(TRAIN_A_HEAD))
    assert got["deferred"] is False
    assert got["dynamo"] == "module"  # torch's own torch._dynamo, imported by the optimizer step as usual


def test_the_graft_command_owns_its_process() -> None:
    got = run(
        """
        import json
        import graft.commands.cli as cli
        import graft.core.deps as deps
        before = bool(deps._OWN_PROCESS)
        cli.main = lambda: print(json.dumps({"before": before, "after": bool(deps._OWN_PROCESS)})) or 0
        cli.entry()
        """
    )
    assert got == {"before": False, "after": True}


COMPILE_AFTER_DEFERRAL = """
    import json, sys
    import torch
    from graft.core.deps import import_torchvision, dynamo_deferred, own_process
    own_process()
    import_torchvision()
    before = dynamo_deferred()
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.01)
    opt.zero_grad()  # torch caches its disable wrapper on first call: here, made by the stand-in

    def step(x):
        loss = head(x).square().sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    x = torch.ones(3, 4)
    compiled = torch.compile(step, backend="eager")
    losses = [float(compiled(x)) for _ in range(3)]
    import torch._dynamo.config  # a submodule: through the stand-in's __path__
    import torch._dynamo
    torch._dynamo.reset()
    print(json.dumps({
        "before": before,
        "after": dynamo_deferred(),
        "real": type(sys.modules["torch._dynamo"]).__name__,
        "same": sys.modules["torch._dynamo"] is torch._dynamo,
        "config": hasattr(torch._dynamo.config, "cache_size_limit"),
        "losses": losses,
    }))
"""


def test_compiling_after_deferral_gets_the_real_dynamo() -> None:
    got = run(COMPILE_AFTER_DEFERRAL)
    assert got["before"] is True and got["after"] is False
    assert got["real"] == "module" and got["same"] and got["config"]
    assert got["losses"][0] > got["losses"][1] > got["losses"][2]  # the compiled steps did train
    assert got["losses"] == run(COMPILE_AFTER_DEFERRAL, GRAFT_DEFER_DYNAMO="0")["losses"]  # exactly, as above


def test_torchvision_ops_still_work_with_the_stand_in() -> None:
    got = run(
        """
        import json
        import torch
        from graft.core.deps import import_torchvision, dynamo_deferred, own_process
        own_process()
        tv = import_torchvision()
        x = torch.arange(16.0).reshape(1, 1, 4, 4)
        out = tv.ops.roi_align(x, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])], output_size=1, aligned=True)
        print(json.dumps({"deferred": dynamo_deferred(), "value": float(out)}))
        """
    )
    assert got["deferred"] is True
    assert got["value"] == 5.0  # aligned box [-0.5, 2.5]^2 averages the ramp around (1, 1): 4 * 1 + 1


@pytest.mark.slow
def test_a_frozen_run_never_imports_dynamo(hymenoptera: Path, tmp_path: Path) -> None:
    """The whole `graft train --mode freeze` path (scan, ONNX features, head on stored features, report)."""
    got = run(
        f"""
        import json, sys
        from graft import train
        from graft.core.deps import dynamo_deferred, own_process
        own_process()
        result = train({str(hymenoptera)!r}, mode="freeze", epochs=2, device="cpu", out={str(tmp_path)!r}, name="r")
        print(json.dumps({{"deferred": dynamo_deferred(), "acc": result.metrics["best_val_acc"]}}))
        """,
        GRAFT_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert got["deferred"] is True
    assert got["acc"] >= 0.9


def test_package_exports_resolve_and_import_their_modules_on_first_use() -> None:
    got = run(
        """
        import json, sys
        import graft.insight, graft.models
        light = {m: m in sys.modules for m in ("torch", "matplotlib")}
        missing = [f"{p.__name__}.{n}" for p in (graft.models, graft.insight) for n in p.__all__ if not hasattr(p, n)]
        print(json.dumps({"light": light, "missing": missing}))
        """
    )
    assert got["light"] == {"torch": False, "matplotlib": False}
    assert got["missing"] == []


def test_a_package_exports_only_its_own_names() -> None:
    """One way to publish a name: a package's ``__init__`` imports, and lists for lazy import, only from its own
    modules; a name that lives in another package is imported from there."""
    import ast

    root = Path(__file__).resolve().parents[1] / "graft"
    foreign = []
    for init in sorted(root.rglob("__init__.py")):
        package = ".".join(init.relative_to(root.parent).parent.parts)
        if package == "graft":  # the top level is the API: graft.train, graft.load, ...
            continue
        tree = ast.parse(init.read_text(encoding="utf-8"))
        exported = {
            e.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
            for e in getattr(n.value, "elts", [])
        }
        sources = [
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and any((a.asname or a.name) in exported for a in n.names)
        ]
        sources += [  # a table of name -> module imported on first use
            v.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Dict)
            for v in n.values
            if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.startswith("graft.")
        ]
        foreign += [f"{package}: {s}" for s in sources if not s.startswith(package + ".")]
    assert foreign == []
