"""Fashion-MNIST with a batch-normalized network: a validation split chooses when to lower the
learning rate and when to stop (keeping the best weights), then the test images are classified
into a Kaggle-style submission file (id,label).

    python examples/03_fashion_bn_submission.py               # 15 epochs: 92.87 %
    python examples/03_fashion_bn_submission.py --limit 3000 --epochs 2

Writes OUT/submission.csv, OUT/history.csv, OUT/curves.png and OUT/loss_accuracy.png.
"""
import argparse
import csv
import os

import numpy as np

import minicnn as mc
from minicnn import data, nn, plot, train


def fashion_bn_net():
    """(N, 1, 28, 28) -> (N, 10). Batch norm after each convolution (which then needs no bias)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),   # (N, 32, 14, 14)
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 7, 7)
        nn.Flatten(),                                                                                 # (N, 3136)
        nn.Dropout(0.3), nn.Linear(3136, 128), nn.ReLU(),
        nn.Linear(128, 10))


def write_submission(path, ids, labels):
    """id,label rows, written to a temporary file first and renamed: never a half-written file."""
    temporary = path + ".part"
    with open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows(zip(ids, labels))
    os.replace(temporary, path)


def main():
    parser = argparse.ArgumentParser(description="Fashion-MNIST BN net, validation split, submission CSV")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training and test images")
    parser.add_argument("--out", default="runs/example-fashion")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    mc.manual_seed(0)
    full_train, test_set = data.FashionMNIST(train=True), data.FashionMNIST(train=False)
    if args.limit:
        full_train = data.Subset(full_train, np.arange(min(args.limit, len(full_train))))
        test_set = data.Subset(test_set, np.arange(min(args.limit, len(test_set))))
    train_set, val_set = data.random_split(full_train, [0.9, 0.1], seed=0)
    normalize = data.Compose([data.ToFloat(), data.Normalize(0.2860, 0.3530)])
    augment = data.Compose([data.RandomHorizontalFlip(0.5), normalize])        # a mirrored shirt is still a shirt
    loader = data.DataLoader(train_set, batch_size=64, shuffle=True, seed=0, transform=augment, device=args.device)
    val_loader = data.DataLoader(val_set, batch_size=1000, transform=normalize, device=args.device)

    model = fashion_bn_net().to(args.device)
    print(mc.summary(model, (1, 28, 28)))
    optimizer = mc.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = mc.optim.ReduceLROnPlateau(optimizer, factor=0.3, patience=1)   # fit steps it with the val loss
    stopper = train.EarlyStopping(monitor="val_loss", patience=3)               # and restores the best weights
    history = train.fit(model, nn.CrossEntropyLoss(label_smoothing=0.05), optimizer, loader, args.epochs,
                        val_loader=val_loader, scheduler=scheduler, early_stopping=stopper,
                        checkpoint_dir=os.path.join(args.out, "checkpoints"),
                        csv_log=os.path.join(args.out, "history.csv"))

    plot.learning_curves(history, os.path.join(args.out, "curves.png"), title="Fashion-MNIST BN net",
                         labels={"train": "train (label smoothing 0.05)", "val": "validation (held out)"})
    plot.loss_accuracy_chart(history, os.path.join(args.out, "loss_accuracy.png"))
    _, predicted = train.predict(model, normalize(test_set.data))
    write_submission(os.path.join(args.out, "submission.csv"), range(1, len(predicted) + 1), predicted)
    print(f"best validation loss {stopper.best:.4f} at epoch {stopper.best_epoch}; test accuracy "
          f"{np.mean(predicted == test_set.targets):.2%}; submission: {os.path.join(args.out, 'submission.csv')}")


if __name__ == "__main__":
    main()
