"""The reference: the PyTorch "transfer learning for computer vision" tutorial algorithm, written independently.

Faithful to the tutorial (pytorch.org, "Transfer Learning for Computer Vision Tutorial"): ImageFolder datasets
(whose extension list has no .gif, so hymenoptera's imageNotFound.gif is silently ignored, as in the tutorial),
RandomResizedCrop(224) + flip for train, Resize(256) + CenterCrop(224) for val, ImageNet normalization, batch 4,
shuffle, num_workers 4, CrossEntropyLoss, SGD(lr=0.001, momentum=0.9), StepLR(7, 0.1), a train then a val phase per
epoch, the best val accuracy's weights kept. ``--mode freeze`` sets requires_grad=False on all but the new head and,
like the tutorial, still calls model.train() (BatchNorm statistics drift). graft is imported only to locate the
offline weights file.

    python -m benchmarks.tutorial_reference DATA --mode freeze --epochs 25 [--measure K] --json out.json

``--measure K`` runs only K epochs and estimates the 25-epoch time as ``setup + e1 + 24 * mean(e2..eK)``: a real
run has one first epoch (worker start-up, warm-up), counted once with its own time; the others are represented
by the mean of the later measured epochs. With K = 1 it is ``setup + 25 * e1`` (an overestimate; flagged).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

START = time.perf_counter()

import torch  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.optim import lr_scheduler  # noqa: E402
from torchvision import datasets, models, transforms  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build(arch: str, n_classes: int) -> tuple[nn.Module, nn.Module]:
    """Pretrained model with its last Linear replaced; returns (model, new head)."""
    from graft.models.weights import resolve  # only to find the offline file

    files = {"mobilenet_v2": "mobilenet_v2-b0353104.pth", "resnet18": "resnet18-f37072fd.pth"}
    model = getattr(models, arch)()
    model.load_state_dict(torch.load(resolve(files[arch]).path, map_location="cpu", weights_only=True))
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, n_classes)
        return model, model.fc
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, n_classes)
    return model, model.classifier[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--mode", choices=["freeze", "finetune"], default="finetune")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--measure", type=int, default=None, help="run only this many epochs and extrapolate")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)

    data_transforms = {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        ),
        "val": transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        ),
    }
    image_datasets = {x: datasets.ImageFolder(os.path.join(args.data, x), data_transforms[x]) for x in ["train", "val"]}
    loaders = {
        x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=True, num_workers=4)
        for x in ["train", "val"]
    }
    sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    model, head = build(args.arch, len(image_datasets["train"].classes))
    if args.mode == "freeze":
        for p in model.parameters():
            p.requires_grad = False
        for p in head.parameters():
            p.requires_grad = True
        optimizer = optim.SGD(head.parameters(), lr=0.001, momentum=0.9)
    else:
        optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()

    run_epochs = min(args.epochs, args.measure or args.epochs)
    best_acc, best_wts, epoch_seconds, history = 0.0, copy.deepcopy(model.state_dict()), [], []
    for epoch in range(run_epochs):
        t0 = time.perf_counter()
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data).item()
            if phase == "train":
                scheduler.step()
            acc = running_corrects / sizes[phase]
            if phase == "val":
                history.append(acc)
                if acc > best_acc:
                    best_acc, best_wts = acc, copy.deepcopy(model.state_dict())
        epoch_seconds.append(time.perf_counter() - t0)
        print(f"epoch {epoch + 1}/{run_epochs} val acc {history[-1]:.4f} {epoch_seconds[-1]:.1f}s", flush=True)
    model.load_state_dict(best_wts)
    total = time.perf_counter() - START
    setup = total - sum(epoch_seconds)
    if len(epoch_seconds) > 1:
        later = sum(epoch_seconds[1:]) / (len(epoch_seconds) - 1)
        estimate = setup + epoch_seconds[0] + (args.epochs - 1) * later
    else:
        estimate = setup + args.epochs * epoch_seconds[0]
    estimate = total if run_epochs == args.epochs else estimate
    result = {
        "mode": args.mode,
        "arch": args.arch,
        "epochs_planned": args.epochs,
        "epochs_run": run_epochs,
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "setup_seconds": round(setup, 2),
        "seconds_run": round(total, 2),
        "seconds_for_planned_epochs": round(estimate, 2),
        "extrapolated": run_epochs != args.epochs,
        "best_val_acc": best_acc,
        "val_acc": history,
        "n_train": sizes["train"],
        "n_val": sizes["val"],
        "method": "setup + e1 + (planned - 1) * mean(e2..eK)"
        if run_epochs > 1
        else "setup + planned * e1"
        if run_epochs != args.epochs
        else "measured",
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
