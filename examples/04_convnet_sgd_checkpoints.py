"""A ConvNet (or AlexNet sized for 28x28) on MNIST with SGD, a checkpoint saved after every epoch,
and the two-axis chart of training loss and accuracy. Resume from any epoch with --resume.

    python examples/04_convnet_sgd_checkpoints.py                      # 5 epochs: 99.05 %
    python examples/04_convnet_sgd_checkpoints.py --model alexnet      # 25 M parameters: slow on a CPU
    python examples/04_convnet_sgd_checkpoints.py --resume runs/example-convnet/epoch-3.npz

Writes OUT/epoch-N.npz (model, optimizer, scheduler, generator: enough to continue exactly) and
OUT/loss_accuracy.png.
"""
import argparse
import os
import time

import numpy as np

import minicnn as mc
from minicnn import data, nn, plot, train


def convnet():
    """(N, 1, 28, 28) -> (N, 10): two conv blocks with batch norm, three linear layers with dropout."""
    return nn.Sequential(
        nn.Conv2d(1, 10, 5, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(10),    # (N, 10, 13, 13)
        nn.Conv2d(10, 20, 5, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(20),   # (N, 20, 5, 5)
        nn.Flatten(),                                                                      # (N, 500)
        nn.Linear(500, 60), nn.Dropout(0.5), nn.ReLU(),
        nn.Linear(60, 20), nn.Dropout(0.5), nn.ReLU(),
        nn.Linear(20, 10))


def train_one_epoch(model, loss_fn, optimizer, loader):
    """Mean loss and accuracy over one pass of the loader."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()
        loss_sum += float(loss) * len(labels)
        correct += int((logits.argmax(axis=1) == labels).sum())
        seen += len(labels)
    return loss_sum / seen, correct / seen


def main():
    parser = argparse.ArgumentParser(description="ConvNet/AlexNet with SGD and a checkpoint per epoch")
    parser.add_argument("--model", default="convnet", choices=["convnet", "alexnet"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training and test images")
    parser.add_argument("--resume", default=None, help="an epoch-N.npz written by this script")
    parser.add_argument("--out", default="runs/example-convnet")
    args = parser.parse_args()

    mc.manual_seed(0)
    train_set, test_set = data.MNIST(train=True), data.MNIST(train=False)
    if args.limit:
        train_set = data.Subset(train_set, np.arange(min(args.limit, len(train_set))))
        test_set = data.Subset(test_set, np.arange(min(args.limit, len(test_set))))
    normalize = data.Compose([data.ToFloat(), data.Normalize(0.1307, 0.3081)])
    loader = data.DataLoader(train_set, batch_size=64, shuffle=True, seed=0, transform=normalize)
    test_loader = data.DataLoader(test_set, batch_size=1000, transform=normalize)

    model = convnet() if args.model == "convnet" else mc.models.AlexNetMNIST()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scheduler = mc.optim.CosineAnnealingLR(optimizer, T_max=args.epochs)
    rows, first = [], 1
    if args.resume:                                  # everything that decides what comes next
        state = mc.load(args.resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        mc.random.set_state(state["rng"])
        rows, first = list(state["history"]), int(state["epoch"]) + 1

    os.makedirs(args.out, exist_ok=True)
    for epoch in range(first, args.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_one_epoch(model, loss_fn, optimizer, loader)
        scheduler.step()
        test = train.evaluate(model, test_loader, loss_fn)
        rows.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_accuracy, val_loss=test["loss"],
                         val_accuracy=test["accuracy"], lr=lr, seconds=time.perf_counter() - started))
        path = os.path.join(args.out, f"epoch-{epoch}.npz")
        mc.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "loader": loader.state_dict(), "rng": mc.random.get_state(), "history": rows, "epoch": epoch}, path)
        print(f"epoch {epoch}: loss {train_loss:.4f}, train accuracy {train_accuracy:.2%}, test accuracy "
              f"{test['accuracy']:.2%}, lr {lr:.3g}; saved {path}")

    plot.loss_accuracy_chart(train.History(rows), os.path.join(args.out, "loss_accuracy.png"),
                             title=f"{args.model} on MNIST, SGD", val_label="test accuracy")
    print(f"chart: {os.path.join(args.out, 'loss_accuracy.png')}")


if __name__ == "__main__":
    main()
