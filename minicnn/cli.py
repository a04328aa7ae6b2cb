"""The ``minicnn`` command: train, evaluate, predict, gradcheck, info.

    minicnn train --model lenet --dataset mnist --epochs 3
Errors in what the user typed (unknown names, missing files, bad values) print one line and
exit with status 2; no traceback.
"""
import argparse
import datetime
import math
import os
import platform
import sys
import time

import numpy as np

DEFAULT_LR = {"sgd": 0.02, "adam": 1e-3, "adamw": 1e-3}


def MODEL_CLASSES():
    from minicnn.models import MODELS
    return MODELS


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def nonnegative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def fraction(text):
    value = float(text)
    if not (0 <= value < 1):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def build_parser():
    parser = Parser(prog="minicnn", description="Train and inspect CNNs written from scratch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model on MNIST or Fashion-MNIST")
    t.add_argument("--model", default="lenet", help="one of: " + ", ".join(
        name for name, cls in MODEL_CLASSES().items() if cls.input_shape == (1, 28, 28)))
    t.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    t.add_argument("--epochs", type=positive_int, default=3)
    t.add_argument("--batch-size", type=positive_int, default=32)
    t.add_argument("--optimizer", default="sgd", help="sgd (momentum 0.9), adam or adamw")
    t.add_argument("--lr", type=positive_float, default=None, help="default: 0.02 for sgd, 1e-3 for adam")
    t.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    t.add_argument("--label-smoothing", type=fraction, default=0.1, help="cross-entropy target smoothing in [0, 1)")
    t.add_argument("--scheduler", default="cosine", help="cosine, step or none")
    t.add_argument("--augment", action="store_true", help="random shifts of up to 2 pixels")
    t.add_argument("--val-split", type=fraction, default=0.0, help="fraction of the training set held out")
    t.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    t.add_argument("--test-limit", type=positive_int, default=None, help="use only the first N test images")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--every", type=positive_int, default=1, help="checkpoint every N epochs")
    t.add_argument("--resume", default=None, help="continue an earlier run: its folder, or its checkpoints/last.npz or best.npz")
    t.add_argument("--init-from", default=None, help="start from the weights of a model file or checkpoint (a new run)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--cuda-graph", action="store_true", help="on cuda: replay each training step as one CUDA graph")
    t.add_argument("--data", default=None, help="folder holding the dataset files")
    t.add_argument("--out", default=None, help="run folder (default runs/MODEL-DATASET-TIME); refused if it holds a run")
    t.add_argument("--overwrite", action="store_true", help="let --out replace the run already in that folder")

    e = sub.add_parser("evaluate", help="test accuracy of a run folder or checkpoint")
    e.add_argument("checkpoint", help="a run folder, its model.npz, or checkpoints/last.npz or best.npz")
    e.add_argument("--data", default=None)

    x = sub.add_parser("export", help="write a run's model as ONNX or safetensors (pip install 'minicnn[export]')")
    x.add_argument("checkpoint", help="a run folder, its model.npz, or checkpoints/last.npz or best.npz")
    x.add_argument("--format", default="onnx", choices=["onnx", "safetensors"])
    x.add_argument("--out", default=None, help="the file to write (default: beside the checkpoint, model.onnx or model.safetensors)")

    p = sub.add_parser("predict", help="classify images and write id,label CSV")
    p.add_argument("checkpoint")
    p.add_argument("images", help="an IDX image file (.gz or raw), a .npy array (N, 28, 28) or (N, 1, 28, 28), or a folder of PNG/JPEG images")
    p.add_argument("--csv", default=None, help="output CSV (default: print to stdout)")

    g = sub.add_parser("gradcheck", help="numerical gradient check of the layers or of a model")
    g.add_argument("--model", default=None)
    g.add_argument("--entries", type=positive_int, default=10)

    sub.add_parser("info", help="versions, backends and devices")
    return parser


# ------------------------------------------------------------------ train

def cmd_train(args):
    import minicnn as mc
    from minicnn import data, train

    model_name, dataset_name = args.model.lower(), args.dataset.lower().replace("_", "-")
    model_cls = mc.models.get_model_class(model_name)
    dataset_cls = data.get_dataset_class(dataset_name)
    if model_cls.input_shape != (1, 28, 28):
        raise ValueError(f"model {args.model!r} expects {model_cls.input_shape} images, not {dataset_name}'s (1, 28, 28)")
    if args.optimizer.lower() not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {args.optimizer!r}; choose sgd, adam or adamw")
    if args.scheduler.lower() not in ("cosine", "step", "none"):
        raise ValueError(f"unknown scheduler {args.scheduler!r}; choose cosine, step or none")
    if args.cuda_graph and args.device == "cpu":
        raise ValueError("--cuda-graph needs --device cuda")

    mc.manual_seed(args.seed)
    model = model_cls()                                     # built after seeding: reproducible weights
    resume = _resume_checkpoint(args.resume) if args.resume else None
    out = _run_folder(args, model_name, dataset_name, resume)
    if args.init_from:
        if resume:
            raise ValueError("give --resume (continue a run) or --init-from (start from weights), not both")
        model.load_state_dict(_weights_of(args.init_from))
    if args.device != "cpu":
        model.to(args.device)
    train_set = dataset_cls(root=args.data, train=True)
    test_set = dataset_cls(root=args.data, train=False)
    if args.train_limit:
        train_set = data.Subset(train_set, np.arange(min(args.train_limit, len(train_set))))
    if args.test_limit:
        test_set = data.Subset(test_set, np.arange(min(args.test_limit, len(test_set))))
    val_set = None
    if args.val_split:
        n_val = int(len(train_set) * args.val_split)
        if n_val < 1 or len(train_set) - n_val < args.batch_size:
            raise ValueError(f"--val-split {args.val_split:g} of {len(train_set):,} images leaves {n_val:,} for validation "
                             f"and {len(train_set) - n_val:,} for training; each needs at least one image, training at "
                             f"least one batch ({args.batch_size})")
        train_set, val_set = data.random_split(train_set, [len(train_set) - n_val, n_val], seed=args.seed)
    mean, std = dataset_cls.mean, dataset_cls.std
    normalize = data.Compose([data.ToFloat(), data.Normalize(mean, std)])
    train_tf = data.Compose([data.RandomCrop(28, padding=2), normalize]) if args.augment else normalize
    loader = data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, transform=train_tf, device=args.device)
    test_loader = data.DataLoader(test_set, 1000, transform=normalize, device=args.device)
    val_loader = data.DataLoader(val_set, 1000, transform=normalize, device=args.device) if val_set else test_loader

    lr = args.lr or DEFAULT_LR[args.optimizer.lower()]
    if args.optimizer.lower() == "sgd":
        opt = mc.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    else:
        cls = mc.optim.Adam if args.optimizer.lower() == "adam" else mc.optim.AdamW
        opt = cls(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    scheduler = {"cosine": lambda: mc.optim.CosineAnnealingLR(opt, args.epochs),
                 "step": lambda: mc.optim.StepLR(opt, max(1, args.epochs // 3), 0.1),
                 "none": lambda: None}[args.scheduler.lower()]()

    print(f"minicnn {mc.__version__}: training {type(model).__name__} ({model.num_parameters():,} parameters) on "
          f"{dataset_name} ({len(train_set):,} train / {len(test_set):,} test images), {args.optimizer} lr {lr:g}, "
          f"batch {args.batch_size}, label smoothing {args.label_smoothing:g}, {args.epochs} epochs, backend {mc.backend.get_backend() if args.device == 'cpu' else 'cupy'}")
    started = time.perf_counter()
    meta = {"model": model_name, "dataset": dataset_name, "normalize": [mean, std],
            "classes": list(train_set.classes), "epochs": args.epochs}
    history = train.fit(model, mc.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), opt, loader, args.epochs,
                        val_loader=val_loader,
                        scheduler=scheduler, checkpoint_dir=os.path.join(out, "checkpoints"), every=args.every,
                        resume=resume, cuda_graph=args.cuda_graph, meta=meta)
    wall = time.perf_counter() - started
    test = train.evaluate(model, test_loader, mc.nn.CrossEntropyLoss())

    meta["test_accuracy"] = test["accuracy"]
    mc.save({"model": model.to("cpu").state_dict(), "meta": meta}, os.path.join(out, "model.npz"))
    history.to_json(os.path.join(out, "history.json"))
    history.to_csv(os.path.join(out, "history.csv"))
    _write_plots(model, test_set, normalize, history, out, meta)
    print(f"test accuracy {test['accuracy']:.2%} (loss {test['loss']:.4f}) after {args.epochs} epochs in {wall:.1f}s; "
          f"run folder {out}")
    return 0


def _write_plots(model, test_set, normalize, history, out, meta):
    from minicnn import plot, train
    _, predicted = train.predict(model, normalize(test_set.data))
    plot.save_run_plots(model, history, test_set.data, test_set.targets, predicted, meta["classes"], out,
                        title=f"{meta['model']} on {meta['dataset']}")


# ------------------------------------------------------------------ evaluate / predict

def _run_folder(args, model_name, dataset_name, resume):
    """Where this run writes: --out (refused if a run is there, unless --overwrite or --resume), the
    resumed run's own folder, or a new runs/MODEL-DATASET-TIME (never one that exists: two runs started
    in the same second get -2, -3, ...)."""
    if resume and not args.out and os.path.basename(os.path.dirname(os.path.abspath(resume))) == "checkpoints":
        return os.path.dirname(os.path.dirname(os.path.abspath(resume)))     # the resumed run's own folder
    if args.out:
        holds_a_run = os.path.isdir(args.out) and any(
            os.path.exists(os.path.join(args.out, name)) for name in ("model.npz", "history.json", "checkpoints"))
        if holds_a_run and not (args.overwrite or resume):
            raise ValueError(f"--out {args.out} already holds a run (model.npz, history or checkpoints): give another "
                             "folder, --overwrite to replace it, or --resume to continue it")
        return args.out
    base = os.path.join("runs", f"{model_name}-{dataset_name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs("runs", exist_ok=True)
    for i in range(1, 1000):
        candidate = base if i == 1 else f"{base}-{i}"
        try:
            os.makedirs(candidate)                           # atomic: only one run gets each folder
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder next to {base}")


def _checkpoint_path(path):
    """A run folder means its model.npz (or, with none yet, its checkpoints/last.npz)."""
    if os.path.isdir(path):
        for name in ("model.npz", os.path.join("checkpoints", "last.npz")):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"{path}: a folder without model.npz or checkpoints/last.npz (not a run folder)")
    return path


def _load_run(path):
    """(model with its weights, meta) from any file minicnn train writes: model.npz, checkpoints/last.npz
    or best.npz, or their run folder."""
    import minicnn as mc
    path = _checkpoint_path(path)
    state = mc.load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a checkpoint written by minicnn train (no 'model')")
    meta = state.get("meta") or {}
    if "model" not in meta or "normalize" not in meta:
        raise ValueError(f"{path}: the checkpoint does not say which model and dataset it is for (no 'meta'; "
                         "fit(..., meta=...) writes it): load it with model.load_state_dict(minicnn.load(path))")
    model = mc.models.get_model(meta["model"])
    model.load_state_dict(state["model"])
    return model, meta


def _resume_checkpoint(path):
    """The checkpoint to continue from: a run folder's checkpoints/last.npz, or the file given."""
    if os.path.isdir(path):
        last = os.path.join(path, "checkpoints", "last.npz")
        if not os.path.exists(last):
            raise FileNotFoundError(f"{path}: no checkpoints/last.npz to resume from")
        return last
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def _weights_of(path):
    """A model's weights from a model file, a checkpoint, a run folder or a .safetensors state."""
    import minicnn as mc
    state = mc.load(_checkpoint_path(path))
    return state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state


def cmd_evaluate(args):
    import minicnn as mc
    from minicnn import data, train
    model, meta = _load_run(args.checkpoint)
    test_set = data.get_dataset(meta["dataset"], root=args.data, train=False)
    normalize = data.Compose([data.ToFloat(), data.Normalize(*meta["normalize"])])
    result = train.evaluate(model, data.DataLoader(test_set, 1000, transform=normalize), mc.nn.CrossEntropyLoss())
    print(f"{meta['model']} on {meta['dataset']} test set ({len(test_set):,} images): "
          f"accuracy {result['accuracy']:.2%}, loss {result['loss']:.4f}")
    return 0


def cmd_export(args):
    import minicnn as mc
    model, meta = _load_run(args.checkpoint)
    source = _checkpoint_path(args.checkpoint)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(source)), f"model.{args.format}")
    if args.format == "onnx":
        from minicnn.export import to_onnx
        to_onnx(model, out, mc.models.get_model_class(meta["model"]).input_shape)
    else:
        mc.save(model.state_dict(), out)
    print(f"wrote {meta['model']} ({model.num_parameters():,} parameters) as {args.format} to {out}")
    return 0


def _read_images(path):
    from minicnn import data
    if os.path.isdir(path):
        folder = sorted(f for f in os.listdir(path) if f.lower().endswith(data.folder.EXTENSIONS))
        if not folder:
            raise FileNotFoundError(f"{path}: no PNG/JPEG images in the folder")
        from PIL import Image
        images = []
        for name in folder:
            with Image.open(os.path.join(path, name)) as im:
                images.append(np.asarray(im.convert("L").resize((28, 28))))
        return np.stack(images)[:, None], [os.path.splitext(f)[0] for f in folder]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.endswith(".npy"):
        images = np.load(path, allow_pickle=False)
    else:
        images = data.read_idx(path, expected_ndim=3)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"{path}: expected images (N, 28, 28) or (N, 1, 28, 28), got {images.shape}")
    return images, [str(i + 1) for i in range(len(images))]


def cmd_predict(args):
    from minicnn import data, train
    model, meta = _load_run(args.checkpoint)
    images, ids = _read_images(args.images)
    x = data.Compose([data.ToFloat(), data.Normalize(*meta["normalize"])])(images)
    _, classes = train.predict(model, x)
    lines = ["id,label"] + [f"{i},{c}" for i, c in zip(ids, classes)]
    text = "\n".join(lines) + "\n"
    if args.csv:
        from minicnn.checkpoint import atomic_write_bytes
        atomic_write_bytes(args.csv, text.encode())
        print(f"wrote {len(ids)} predictions to {args.csv}")
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------ gradcheck / info

def cmd_gradcheck(args):
    import minicnn as mc
    from minicnn.gradcheck import layer_cases, tie_free_input
    if args.model:
        model_cls = mc.models.get_model_class(args.model)
        rows = [(model_cls.__name__, model_cls, (2,) + model_cls.input_shape)]
    else:
        rows = layer_cases()
    rng = np.random.default_rng(0)
    failed = 0
    print(f"{'layer or model':<34} {'max rel. error':>14}  result")
    for name, make, shape in rows:
        worst = max(mc.gradcheck(make(), tie_free_input(shape, rng), max_entries=args.entries).values())
        failed += worst >= 1e-6
        print(f"{name:<34} {worst:>14.1e}  {'pass' if worst < 1e-6 else 'FAIL'}")
    return 1 if failed else 0


def cmd_info(args):
    import minicnn as mc
    print(f"minicnn {mc.__version__}  (python {platform.python_version()}, {platform.platform()})")
    for name in ("numpy", "numba", "matplotlib", "tqdm", "PIL", "torch", "cupy"):
        try:
            module = __import__(name)
            print(f"  {name:<10} {getattr(module, '__version__', '?')}")
        except Exception:
            print(f"  {name:<10} not installed")
    print(f"backends available: {', '.join(mc.backend.available_backends())}; CPU default: {mc.backend.get_backend()}")
    cpu = _cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores")
    if "numba" in mc.backend.available_backends():
        print(f"Numba path: {mc.backend.cpu_threads()} threads (MINICNN_THREADS), BLAS on one thread inside them")
    try:
        for i, (name, gib) in enumerate(mc.backend.gpu_devices()):
            print(f"GPU {i}: {name}, {gib:.0f} GiB")
    except RuntimeError as err:
        print(f"GPU: none usable ({err})")
    return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _interrupted(err):
    """What an interrupt leaves behind, in a line."""
    from minicnn.train import TrainingInterrupted
    if not isinstance(err, TrainingInterrupted):
        return "interrupted"
    if err.saved is None:
        return f"interrupted in epoch {err.epoch}; nothing was saved yet (checkpoints are written after each epoch)"
    run = os.path.dirname(os.path.dirname(err.saved))
    return (f"interrupted in epoch {err.epoch}; saved: {err.saved} (after epoch {err.saved_epoch}); "
            f"continue with: minicnn train --resume {run}")


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
            "gradcheck": cmd_gradcheck, "info": cmd_info}


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"minicnn: error: {err} (see minicnn --help)", file=sys.stderr)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as err:
        message = str(err).strip().replace("\n", " ")
        print(f"minicnn: error: {message}", file=sys.stderr)
    except FloatingPointError as err:                 # the loss diverged: a fact about the run, not a usage error
        print(f"minicnn: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"minicnn: {_interrupted(err)}", file=sys.stderr)
        return 130
    except SystemError as err:                        # a signal that landed inside compiled code
        if isinstance(err.__context__, KeyboardInterrupt) or isinstance(err.__cause__, KeyboardInterrupt):
            print("minicnn: interrupted", file=sys.stderr)
            return 130
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())
