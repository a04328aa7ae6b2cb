"""AnimalNet on a folder of photos (the Animals-10 layout: one sub-folder per class), with the
tutorial's augmentation (flip 0.3, rotation +-40 degrees, resize 300, centre crop 256) and Adam 1e-4.

    python examples/train_animalnet.py PHOTO_FOLDER [EPOCHS]
    python examples/train_animalnet.py                 # a small generated folder of shapes
"""
import os
import sys
import tempfile

import numpy as np

import minicnn as mc
from minicnn import data, plot, train


def generated_folder(root, per_class=24, size=300):
    """Three classes of coloured shapes on noise, as JPEG files: a stand-in when no photos are given."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(0)
    for name in ("circle", "square", "triangle"):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            c, r = rng.integers(100, 200, 2), int(rng.integers(40, 90))
            color = tuple(int(v) for v in rng.integers(120, 256, 3))
            box = [c[0] - r, c[1] - r, c[0] + r, c[1] + r]
            if name == "circle":
                draw.ellipse(box, fill=color)
            elif name == "square":
                draw.rectangle(box, fill=color)
            else:
                draw.polygon([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], fill=color)
            image.save(os.path.join(root, name, f"{i:03d}.jpg"), quality=90)
    return root


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else generated_folder(tempfile.mkdtemp(prefix="animals-"))
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    out = "runs/animalnet"
    mc.manual_seed(0)
    resize = data.Compose([data.Resize(300), data.CenterCrop(256)])
    full = data.ImageFolder(folder, transform=resize)
    train_set, val_set = data.random_split(full, [0.8, 0.2], seed=0)
    augment = data.Compose([data.RandomHorizontalFlip(0.3), data.RandomRotation(40), data.ToFloat()])
    loader = data.DataLoader(train_set, 16, shuffle=True, seed=0, transform=augment)
    val_loader = data.DataLoader(val_set, 16, transform=data.ToFloat())
    model = mc.models.AnimalNet(num_classes=len(full.classes))
    optimizer = mc.optim.Adam(model.parameters(), lr=1e-4)
    history = train.fit(model, mc.nn.CrossEntropyLoss(), optimizer, loader, epochs, val_loader=val_loader,
                        checkpoint_dir=os.path.join(out, "checkpoints"))
    images = np.stack([val_set[i][0] for i in range(len(val_set))])
    labels = np.array([val_set[i][1] for i in range(len(val_set))])
    _, predicted = train.predict(model, data.ToFloat()(images), batch_size=16)
    plot.save_run_plots(model, history, images, labels, predicted, full.classes, out, title="AnimalNet")
    history.to_json(os.path.join(out, "history.json"))
    print(f"validation accuracy {history.val_accuracy[-1]:.2%}; plots in {out}/")


if __name__ == "__main__":
    main()
