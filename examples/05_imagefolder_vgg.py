"""A small VGG-style network on a folder of photos (one sub-folder per class, as torchvision's
ImageFolder), with augmentation prepared by loader threads. Without a folder, a generated one of
coloured shapes stands in.

    python examples/05_imagefolder_vgg.py PHOTOS            # PHOTOS/cat/*.jpg, PHOTOS/dog/*.jpg, ...
    python examples/05_imagefolder_vgg.py                   # generated shapes: 100 % of 72 in 8 epochs
    python examples/05_imagefolder_vgg.py --per-class 12 --epochs 1

Every photo is resized (shorter side 72) and centre-cropped to 64x64; training images are then
flipped, rotated and shifted at random. Writes OUT/curves.png, OUT/predictions.png, OUT/model.npz.
"""
import argparse
import os
import tempfile

import numpy as np

import minicnn as mc
from minicnn import data, nn, plot, train


def vgg_block(c_in, c_out):
    """Two 3x3 convolutions and a 2x2 max-pool: (N, c_in, H, W) -> (N, c_out, H/2, W/2)."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.MaxPool2d(2)]


def small_vgg(num_classes):
    """(N, 3, 64, 64) -> (N, num_classes)."""
    return nn.Sequential(*vgg_block(3, 16), *vgg_block(16, 32), *vgg_block(32, 64),     # (N, 64, 8, 8)
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),                        # (N, 64)
                         nn.Dropout(0.3), nn.Linear(64, num_classes))


def main():
    parser = argparse.ArgumentParser(description="A small VGG on an ImageFolder with augmentation")
    parser.add_argument("folder", nargs="?", default=None, help="photos in one sub-folder per class")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=120, help="images per class of the generated folder")
    parser.add_argument("--workers", type=int, default=2, help="threads preparing batches")
    parser.add_argument("--out", default="runs/example-vgg")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    folder = args.folder or data.make_shapes_folder(tempfile.mkdtemp(prefix="shapes-"), per_class=args.per_class)
    mc.manual_seed(0)
    same_size = data.Compose([data.Resize(72), data.CenterCrop(64)])          # applied to each photo as it is read
    photos = data.ImageFolder(folder, transform=same_size)
    print(f"{photos}: classes {photos.classes}")
    train_set, val_set = data.random_split(photos, [0.8, 0.2], seed=0)
    scale = data.Compose([data.ToFloat(), data.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])])
    augment = data.Compose([data.RandomHorizontalFlip(0.5), data.RandomRotation(15),
                            data.RandomCrop(64, padding=4), scale])
    loader = data.DataLoader(train_set, batch_size=32, shuffle=True, seed=0, transform=augment,
                             num_workers=args.workers, device=args.device)
    val_loader = data.DataLoader(val_set, batch_size=64, transform=scale, num_workers=args.workers, device=args.device)

    model = small_vgg(len(photos.classes)).to(args.device)
    print(mc.summary(model, (3, 64, 64)))
    optimizer = mc.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = mc.optim.OneCycleLR(optimizer, max_lr=3e-3, epochs=args.epochs, steps_per_epoch=len(loader))
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, loader, args.epochs, val_loader=val_loader,
                        scheduler=scheduler, early_stopping=train.EarlyStopping("val_accuracy", patience=4))

    os.makedirs(args.out, exist_ok=True)
    plot.learning_curves(history, os.path.join(args.out, "curves.png"), title="Small VGG on " + os.path.basename(folder))
    images = np.stack([val_set[i][0] for i in range(len(val_set))])
    labels = np.array([val_set[i][1] for i in range(len(val_set))])
    _, predicted = train.predict(model.to("cpu"), scale(images), batch_size=64)
    plot.predictions_grid(images[:24], labels[:24], predicted[:24], photos.classes,
                          os.path.join(args.out, "predictions.png"))
    mc.save(model.state_dict(), os.path.join(args.out, "model.npz"))
    print(f"validation accuracy {np.mean(predicted == labels):.2%} on {len(labels)} photos; plots in {args.out}/")


if __name__ == "__main__":
    main()
