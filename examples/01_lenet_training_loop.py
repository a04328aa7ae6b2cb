"""LeNet-5 on MNIST with a training loop written out: the five lines of every PyTorch loop, and the
one that differs here. minicnn has no autograd: the loss function gives dL/dlogits and the model
sends it back through its layers (model.backward), filling every parameter's .grad.

    python examples/01_lenet_training_loop.py                        # 3 epochs: 98.76 %, 15 s
    python examples/01_lenet_training_loop.py --limit 2000 --epochs 1  # a quick look

Data: the folder MINICNN_DATA names (holding mnist/), else ~/.cache/minicnn, else downloaded.
"""
import argparse
import os
import time

import numpy as np

import minicnn as mc
from minicnn import data, nn


def lenet():
    """Shapes for a batch of N images: (N, 1, 28, 28) -> (N, 10) class scores (logits)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),     # (N, 6, 14, 14)
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),               # (N, 16, 5, 5)
        nn.Flatten(),                                                  # (N, 400)
        nn.Linear(400, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def evaluate(model, loader):
    """Accuracy over a loader: eval mode, and no_grad so that layers keep nothing for a backward."""
    model.eval()
    correct = 0
    with mc.no_grad():                                   # torch: with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(axis=1) == labels).sum())
    return correct / len(loader.dataset)


def main():
    parser = argparse.ArgumentParser(description="LeNet-5 on MNIST with a hand-written training loop")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training and test images")
    parser.add_argument("--out", default="runs/example-lenet")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    mc.manual_seed(0)                                    # the same weights and batches every run
    train_set, test_set = data.MNIST(train=True), data.MNIST(train=False)
    if args.limit:
        train_set = data.Subset(train_set, np.arange(min(args.limit, len(train_set))))
        test_set = data.Subset(test_set, np.arange(min(args.limit, len(test_set))))
    normalize = data.Compose([data.ToFloat(), data.Normalize(0.1307, 0.3081)])   # MNIST's pixel mean and std
    train_loader = data.DataLoader(train_set, batch_size=64, shuffle=True, seed=0, transform=normalize,
                                   device=args.device)
    test_loader = data.DataLoader(test_set, batch_size=1000, transform=normalize, device=args.device)

    model = lenet().to(args.device)
    print(mc.summary(model, (1, 28, 28)))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    for epoch in range(1, args.epochs + 1):
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for step, (images, labels) in enumerate(train_loader):
            logits = model(images)                       # the same in torch
            loss = loss_fn(logits, labels)               # the same in torch
            optimizer.zero_grad()                        # the same in torch
            model.backward(loss_fn.backward())           # torch: loss.backward()
            optimizer.step()                             # the same in torch
            seen += len(labels)
            loss_sum += float(loss) * len(labels)
            if step % 200 == 0:
                print(f"  epoch {epoch} step {step:>4}: loss {float(loss):.4f}")
        seconds = time.perf_counter() - started
        print(f"epoch {epoch}: mean training loss {loss_sum / seen:.4f}, test accuracy "
              f"{evaluate(model, test_loader):.2%}, {seen / seconds:,.0f} images/s")

    os.makedirs(args.out, exist_ok=True)
    mc.save(model.to("cpu").state_dict(), os.path.join(args.out, "lenet.npz"))   # torch: torch.save(...)
    print(f"weights saved to {os.path.join(args.out, 'lenet.npz')}; load them with "
          "model.load_state_dict(minicnn.load(path))")


if __name__ == "__main__":
    main()
