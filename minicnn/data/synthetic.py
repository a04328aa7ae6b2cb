"""A small generated photo folder (ImageFolder layout) for examples, tests and loader benchmarks,
when no photos are at hand: coloured circles, squares and triangles on noise, as JPEG files."""
import os

import numpy as np

SHAPES = ("circle", "square", "triangle")


def make_shapes_folder(root, per_class=24, size=96, seed=0):
    """Write root/circle/000.jpg ... root/triangle/NNN.jpg (size x size RGB) and return root.
    The shape's place, size and colour vary; the background is noise."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    for name in SHAPES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3 + 1, 2))
            r = int(rng.integers(size // 7, size // 3 - 1))
            color = tuple(int(v) for v in rng.integers(120, 256, 3))
            box = [cx - r, cy - r, cx + r, cy + r]
            if name == "circle":
                draw.ellipse(box, fill=color)
            elif name == "square":
                draw.rectangle(box, fill=color)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
            image.save(os.path.join(root, name, f"{i:03d}.jpg"), quality=90)
    return root
