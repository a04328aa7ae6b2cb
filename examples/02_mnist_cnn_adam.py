"""The classic Keras/PyTorch MNIST network (two 3x3 convolutions, max-pooling, dropout, 512 hidden
units) trained with Adam, then read through its confusion matrix: which digits it mixes up.

    python examples/02_mnist_cnn_adam.py                 # 3 epochs: 98.94 %
    python examples/02_mnist_cnn_adam.py --limit 2000 --epochs 1

Writes OUT/confusion.png, OUT/predictions.png, OUT/curves.png and OUT/history.csv.
"""
import argparse
import os

import numpy as np

import minicnn as mc
from minicnn import data, nn, plot, train


def mnist_cnn():
    """(N, 1, 28, 28) -> (N, 10)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),               # (N, 32, 13, 13)
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),              # (N, 64, 5, 5)
        nn.Flatten(),                                                  # (N, 1600)
        nn.Linear(1600, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 10))


def main():
    parser = argparse.ArgumentParser(description="MNIST CNN with Adam and a confusion matrix")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training and test images")
    parser.add_argument("--out", default="runs/example-mnist-cnn")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    mc.manual_seed(0)
    full_train, test_set = data.MNIST(train=True), data.MNIST(train=False)
    if args.limit:
        full_train = data.Subset(full_train, np.arange(min(args.limit, len(full_train))))
        test_set = data.Subset(test_set, np.arange(min(args.limit, len(test_set))))
    # 10% of the training images are held out to watch for overfitting; the test set is used once, at the end
    train_set, val_set = data.random_split(full_train, [0.9, 0.1], seed=0)
    normalize = data.Compose([data.ToFloat(), data.Normalize(0.1307, 0.3081)])
    loader = data.DataLoader(train_set, batch_size=128, shuffle=True, seed=0, transform=normalize, device=args.device)
    val_loader = data.DataLoader(val_set, batch_size=1000, transform=normalize, device=args.device)

    model = mnist_cnn().to(args.device)
    optimizer = mc.optim.Adam(model.parameters(), lr=1e-3)
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, loader, args.epochs, val_loader=val_loader)

    os.makedirs(args.out, exist_ok=True)
    history.to_csv(os.path.join(args.out, "history.csv"))
    plot.learning_curves(history, os.path.join(args.out, "curves.png"), title="MNIST CNN, Adam 1e-3")

    probabilities, predicted = train.predict(model, normalize(test_set.data))   # model.eval() and no_grad inside
    truth = test_set.targets
    print(f"test accuracy {np.mean(predicted == truth):.2%} on {len(truth):,} images")
    matrix = train.confusion_matrix(truth, predicted, 10)
    plot.confusion_matrix_plot(matrix, test_set.classes, os.path.join(args.out, "confusion.png"))
    mistakes = matrix - np.diag(np.diag(matrix))
    for flat in np.argsort(mistakes, axis=None)[::-1][:3]:
        true, guess = divmod(int(flat), 10)
        if mistakes[true, guess]:
            print(f"  a {true} taken for a {guess}: {mistakes[true, guess]} times")
    wrong = np.flatnonzero(predicted != truth)[:16]
    unsure = np.argsort(probabilities.max(axis=1))[:8]                       # the least confident answers
    picks = np.concatenate([wrong, unsure])
    plot.predictions_grid(test_set.data[picks], truth[picks], predicted[picks], test_set.classes,
                          os.path.join(args.out, "predictions.png"), title="Mistakes, then the least sure")
    print(f"plots in {args.out}/")


if __name__ == "__main__":
    main()
