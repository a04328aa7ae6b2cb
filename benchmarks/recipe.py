"""One training recipe, run by minicnn and by PyTorch on the same batches from the same weights:
test accuracy and training time of each (the accuracy table of benchmarks/README.md comes from here).

    MINICNN_DATA=../shared/data python benchmarks/recipe.py --model resnet14 --dataset fashion-mnist \\
        --epochs 20 --optimizer sgd --lr 0.1 --weight-decay 5e-4 --batch-size 128 --augment crop,flip \\
        --libraries minicnn,torch [--torch-epochs 2] [--minicnn-epochs 2] [--seed 0] [--out results/recipe-NAME.json]

Both libraries start from the same initial weights (minicnn's, seeded) and train on the same batches
(minicnn's DataLoader with its transforms, reseeded before each library), with the same optimizer
(SGD with Nesterov momentum 0.9, or Adam), a cosine schedule stepped per epoch and cross-entropy
with label smoothing. --torch-epochs N times torch for its first N epochs only (the same recipe's
schedule), to estimate its time for the whole recipe without running it twice over; --minicnn-epochs N
does the same for minicnn (both on a quiet machine: the two times of one recipe side by side).
"""
import argparse
import json
import os
import platform
import time

import numpy as np

import minicnn as mc
from minicnn import data


def loaders(dataset, seed, batch_size, augment, limit):
    cls = data.get_dataset_class(dataset)
    train_set, test_set = cls(train=True), cls(train=False)
    if limit:
        train_set = data.Subset(train_set, np.arange(limit))
    normalize = data.Compose([data.ToFloat(), data.Normalize(cls.mean, cls.std)])
    steps = []
    if "crop" in augment:
        steps.append(data.RandomCrop(28, padding=2))
    if "flip" in augment:
        steps.append(data.RandomHorizontalFlip(0.5))
    train_tf = data.Compose(steps + [normalize])
    return (data.DataLoader(train_set, batch_size, shuffle=True, seed=seed, transform=train_tf),
            data.DataLoader(test_set, 1000, transform=normalize))


def train_minicnn(model, args, epochs, train_loader, test_loader):
    params = model.parameters()
    opt = mc.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay) \
        if args.optimizer == "sgd" else mc.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    sched = mc.optim.CosineAnnealingLR(opt, args.epochs)
    loss_fn = mc.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in train_loader:
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        sched.step()
        seconds.append(time.perf_counter() - started)
    return seconds, mc.train.evaluate(model, test_loader)["accuracy"]


def train_torch(model, args, epochs, train_loader, test_loader):
    import torch
    from minicnn.interop import to_torch
    net = to_torch(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay) \
        if args.optimizer == "sgd" else torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        net.train()
        for x, y in train_loader:
            opt.zero_grad()
            loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            opt.step()
        sched.step()
        seconds.append(time.perf_counter() - started)
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(torch.from_numpy(x)).argmax(1).numpy() == y).sum()) for x, y in test_loader)
    return seconds, correct / len(test_loader.dataset)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet14", choices=sorted(mc.models.MODELS))
    parser.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--augment", default="crop,flip", help="comma-separated: crop (2-pixel shifts), flip, or none")
    parser.add_argument("--libraries", default="minicnn,torch")
    parser.add_argument("--torch-epochs", type=int, default=0, help="time torch over its first N epochs only")
    parser.add_argument("--minicnn-epochs", type=int, default=0, help="time minicnn over its first N epochs only")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args()
    libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = set(libraries) - {"minicnn", "torch"}
    if unknown:
        parser.error(f"--libraries: unknown {sorted(unknown)}; choose minicnn, torch")
    if args.torch_epochs < 0 or args.minicnn_epochs < 0:
        parser.error("--torch-epochs and --minicnn-epochs count epochs: 0 (all of them) or more")
    augment = {a.strip() for a in args.augment.split(",")} - {"none", ""}
    recipe = (f"{args.model} on {args.dataset}: {args.epochs} epochs, {args.optimizer} lr {args.lr:g} "
              f"{'Nesterov 0.9, ' if args.optimizer == 'sgd' else ''}weight decay {args.weight_decay:g}, cosine, "
              f"batch {args.batch_size}, label smoothing {args.label_smoothing:g}, "
              f"augment {','.join(sorted(augment)) or 'none'}, seed {args.seed}")
    print(recipe, flush=True)
    results = {"recipe": recipe, "args": vars(args), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, python {platform.python_version()}", "runs": {}}
    for name in libraries:
        mc.manual_seed(args.seed)
        model = mc.models.get_model(args.model)              # both start from these weights
        train_loader, test_loader = loaders(args.dataset, args.seed, args.batch_size, augment, args.limit)
        epochs = {"torch": args.torch_epochs, "minicnn": args.minicnn_epochs}[name] or args.epochs
        run = train_minicnn if name == "minicnn" else train_torch
        seconds, accuracy = run(model, args, epochs, train_loader, test_loader)
        whole = sum(seconds) * args.epochs / epochs
        note = "" if epochs == args.epochs else f" (measured over {epochs} epochs, scaled; accuracy after them)"
        print(f"{name:8s} training {whole:7.1f} s{note}   {np.median(seconds):.1f} s an epoch   "
              f"test accuracy {accuracy:.2%}", flush=True)
        results["runs"][name] = {"seconds_per_epoch": seconds, "training_seconds": whole, "epochs_run": epochs,
                                 "test_accuracy": accuracy}
    if args.out:
        from minicnn.checkpoint import atomic_write_bytes
        atomic_write_bytes(args.out, json.dumps(results, indent=1).encode())


if __name__ == "__main__":
    main()
