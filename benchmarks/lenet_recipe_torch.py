"""PyTorch's time for the README's main job, for comparison with `minicnn train --model lenet
--dataset mnist --epochs 3`: the same LeNet, the same starting weights, the same recipe (SGD lr 0.02,
Nesterov momentum 0.9, cosine schedule per epoch, batch 32, label smoothing 0.1, the same shuffled
batches from minicnn's DataLoader, normalized MNIST), then test accuracy.

    MINICNN_DATA=../shared/data python benchmarks/lenet_recipe_torch.py [--epochs 3] [--seed 0] [--limit N]
        [--batch-size 32] [--label-smoothing 0.1] [--lr 0.02]

Prints the training seconds and test accuracy of torch and, with --minicnn, of minicnn run the
same way in the same process (training loop only: no plots, no checkpoints).
"""
import argparse
import time

import numpy as np
import torch

import minicnn as mc
from minicnn import data

from speed import torch_twin


def loaders(limit, seed, batch_size):
    train_set, test_set = data.MNIST(train=True), data.MNIST(train=False)
    if limit:
        train_set = data.Subset(train_set, np.arange(limit))
    normalize = data.Compose([data.ToFloat(), data.Normalize(data.MNIST.mean, data.MNIST.std)])
    return (data.DataLoader(train_set, batch_size, shuffle=True, seed=seed, transform=normalize),
            data.DataLoader(test_set, 1000, transform=normalize))


def train_torch(model, train_loader, test_loader, epochs, lr, smoothing):
    net = torch_twin(model)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    started = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for x, y in train_loader:
            opt.zero_grad()
            loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            opt.step()
        sched.step()
    seconds = time.perf_counter() - started
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(torch.from_numpy(x)).argmax(1).numpy() == y).sum()) for x, y in test_loader)
    return seconds, correct / len(test_loader.dataset)


def train_minicnn(model, train_loader, test_loader, epochs, lr, smoothing):
    opt = mc.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    sched = mc.optim.CosineAnnealingLR(opt, epochs)
    loss_fn = mc.nn.CrossEntropyLoss(label_smoothing=smoothing)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        sched.step()
    seconds = time.perf_counter() - started
    return seconds, mc.train.evaluate(model, test_loader)["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order, as minicnn train --seed")
    parser.add_argument("--minicnn", action="store_true", help="also time minicnn the same way")
    args = parser.parse_args()
    torch.manual_seed(0)
    runs = [("torch", train_torch)] + ([("minicnn", train_minicnn)] if args.minicnn else [])
    print(f"LeNet, MNIST, {args.epochs} epochs, SGD lr {args.lr:g} Nesterov, cosine, batch {args.batch_size}, "
          f"label smoothing {args.label_smoothing:g}, seed {args.seed}, "
          f"torch threads {torch.get_num_threads()}")
    for name, run in runs:
        mc.manual_seed(args.seed)
        model = mc.models.LeNet()                       # both start from these weights
        train_loader, test_loader = loaders(args.limit, args.seed, args.batch_size)
        seconds, accuracy = run(model, train_loader, test_loader, args.epochs, args.lr, args.label_smoothing)
        print(f"{name:8s} training {seconds:6.1f} s   test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
