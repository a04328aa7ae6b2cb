"""DataLoader(num_workers=N) against num_workers=0 on a folder of JPEG photos with augmentation:
seconds per epoch (decode, resize, crop, flip, rotate, scale), the median of interleaved repeats,
and a check that every setting delivered the same batches.

    python benchmarks/loader_speed.py [--images 600] [--size 160] [--workers 0,1,2,4] [--repeats 5]

The folder is generated (minicnn.data.make_shapes_folder) in a temporary directory. A measurement,
not a test; the workers are threads, so what they gain is the time NumPy and Pillow run outside
Python's lock.
"""
import argparse
import hashlib
import os
import statistics
import tempfile
import time

import minicnn as mc
from minicnn import data


def make_loader(root, workers):
    resize = data.Compose([data.Resize(128), data.CenterCrop(112)])
    augment = data.Compose([data.RandomHorizontalFlip(0.5), data.RandomRotation(30), data.RandomCrop(112, padding=8)])
    folder = data.ImageFolder(root, transform=resize)
    return data.DataLoader(folder, 32, shuffle=True, seed=0, transform=augment, num_workers=workers)


def epoch(loader):
    digest, started = hashlib.sha256(), time.perf_counter()
    for x, y in loader:
        digest.update(x.tobytes())
        digest.update(y.tobytes())
    return time.perf_counter() - started, digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="images in all (three classes)")
    parser.add_argument("--size", type=int, default=160, help="side of the generated JPEGs")
    parser.add_argument("--workers", default="0,1,2,4")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = data.make_shapes_folder(os.path.join(tmp, "shapes"), per_class=args.images // 3, size=args.size)
        times, digests = {w: [] for w in workers}, {w: set() for w in workers}
        for _ in range(args.repeats):
            for w in workers:                                  # interleaved: noise hits every setting alike
                seconds, digest = epoch(make_loader(root, w))
                times[w].append(seconds)
                digests[w].add(digest)
    base = statistics.median(times[workers[0]])
    print(f"minicnn {mc.__version__}, {os.cpu_count()} logical cores, {args.images} JPEGs of {args.size}px, "
          f"batch 32, {args.repeats} repeats")
    print(f"{'num_workers':>11} {'s/epoch':>8} {'speedup':>8}  same batches")
    same = len(set.union(*digests.values())) == 1
    for w in workers:
        median = statistics.median(times[w])
        print(f"{w:>11} {median:>8.2f} {base / median:>7.2f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
