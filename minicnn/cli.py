"""The ``minicnn`` command: train, evaluate, predict, export, lr-find, gradcheck, info.

    minicnn train --model lenet --dataset mnist --epochs 3
Errors in what the user typed (unknown names, missing files, bad values) print one line and
exit with status 2; no traceback.
"""
import argparse
import datetime
import glob
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


class DefaultsFormatter(argparse.HelpFormatter):
    """--help lines end with the default, where there is one (not None or False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if not (default is None or default is False or default is argparse.SUPPRESS) and action.option_strings \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Usage errors raise UsageError (one line, exit 2); no abbreviations (--epoch is not --epochs);
    --help shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

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
        f"{name} ({cls.__name__})" for name, cls in MODEL_CLASSES().items()))
    t.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    t.add_argument("--epochs", type=positive_int, default=3, help="passes over the training images")
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    t.add_argument("--optimizer", default="sgd", help="sgd (Nesterov momentum 0.9), adam or adamw")
    t.add_argument("--lr", type=positive_float, default=None, help="learning rate (the peak for onecycle); "
                   "default: 0.02 for sgd, 1e-3 for adam and adamw")
    t.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="L2 penalty (decoupled for adamw)")
    t.add_argument("--label-smoothing", type=fraction, default=0.1,
                   help="cross-entropy target smoothing in [0, 1) for training (test loss is reported without it)")
    t.add_argument("--scheduler", default="cosine", help="cosine, step (x0.1 every third of the epochs), onecycle "
                   "(per batch), plateau (x0.1 when the validation loss stalls 2 epochs) or none")
    t.add_argument("--augment", action="store_true", help="random shifts of up to 2 pixels")
    t.add_argument("--val-split", type=fraction, default=0.1, help="fraction of the training images held out for "
                   "validation (choosing best.npz, early stopping); 0: no validation, the test set is never used for it")
    t.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop at the first epoch after PATIENCE epochs without a better validation loss (patience counted "
                   "as torch's ReduceLROnPlateau counts it: 2 stops after 3 such epochs); keep the best weights")
    t.add_argument("--clip-grad-norm", type=positive_float, default=None, help="clip the gradients' total norm to this")
    t.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    t.add_argument("--test-limit", type=positive_int, default=None, help="use only the first N test images")
    t.add_argument("--seed", type=int, default=0, help="seeds the weights, the shuffling and the augmentation")
    t.add_argument("--every", type=positive_int, default=1, help="checkpoint every N epochs")
    t.add_argument("--resume", default=None, help="continue an earlier run: its folder, or its checkpoints/last.npz or "
                   "best.npz; the run's settings (model, dataset, optimizer, schedule, batch size, ...) are taken from "
                   "it unless given again, and --epochs is the new total")
    t.add_argument("--init-from", default=None, help="start from the weights of a model file or checkpoint (a new run)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--cuda-graph", action="store_true", help="on cuda: replay each training step as one CUDA graph")
    t.add_argument("--data", default=None, help="folder holding mnist/ and fashion-mnist/ (as MINICNN_DATA; a dataset's "
                   "own folder works too); default: MINICNN_DATA, the cache, then download")
    t.add_argument("--out", default=None, help="run folder (default runs/MODEL-DATASET-TIME); refused if it holds a run")
    t.add_argument("--overwrite", action="store_true", help="let --out replace the run already in that folder")

    e = sub.add_parser("evaluate", help="test accuracy of a run folder or checkpoint")
    e.add_argument("checkpoint", help="a run folder, its model.npz, or checkpoints/last.npz or best.npz")
    e.add_argument("--data", default=None, help="folder holding mnist/ and fashion-mnist/ (as MINICNN_DATA)")

    x = sub.add_parser("export", help="write a run's model as ONNX or safetensors (pip install 'minicnn[export]')")
    x.add_argument("checkpoint", help="a run folder, its model.npz, or checkpoints/last.npz or best.npz")
    x.add_argument("--format", default="onnx", choices=["onnx", "safetensors"])
    x.add_argument("--out", default=None, help="the file to write (default: beside the checkpoint, model.onnx or model.safetensors)")

    p = sub.add_parser("predict", help="classify images and write id,label CSV")
    p.add_argument("checkpoint", help="a run folder, its model.npz, or checkpoints/last.npz or best.npz")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...: any size or mode, converted to 28x28 "
                   "grayscale), folders of them, glob patterns ('digits/*.png'), IDX image files (.gz or raw) or .npy "
                   "arrays (N, 28, 28) uint8")
    p.add_argument("--csv", default=None, help="output CSV (default: print to stdout)")
    p.add_argument("--invert", action="store_true", help="invert the images (dark ink on light paper)")

    f = sub.add_parser("lr-find", help="learning-rate range test: loss against an exponentially growing rate, plotted")
    f.add_argument("--model", default="lenet", help="one of: " + ", ".join(MODEL_CLASSES()))
    f.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    f.add_argument("--optimizer", default="sgd", help="sgd (Nesterov momentum 0.9), adam or adamw")
    f.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    f.add_argument("--label-smoothing", type=fraction, default=0.1, help="as in train")
    f.add_argument("--start-lr", type=positive_float, default=1e-6, help="the first rate tried")
    f.add_argument("--end-lr", type=positive_float, default=10.0, help="the last rate tried")
    f.add_argument("--iters", type=positive_int, default=100, help="batches to try")
    f.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    f.add_argument("--seed", type=int, default=0, help="seeds the weights and the shuffling")
    f.add_argument("--data", default=None, help="folder holding mnist/ and fashion-mnist/ (as MINICNN_DATA)")
    f.add_argument("--out", default="lr-find.png", help="the plot to write")

    g = sub.add_parser("gradcheck", help="numerical gradient check of the layers or of a model")
    g.add_argument("--model", default=None, help="check a whole model instead of each layer")
    g.add_argument("--entries", type=positive_int, default=10, help="entries checked per gradient")

    sub.add_parser("info", help="versions, backends and devices")
    return parser


# ------------------------------------------------------------------ train

# The options a run is made of: `train --resume` takes each from the run's checkpoint unless given again.
RUN_SETTINGS = ("model", "dataset", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "label_smoothing",
                "scheduler", "augment", "val_split", "early_stopping", "clip_grad_norm", "train_limit", "test_limit",
                "seed")


def cmd_train(args):
    import minicnn as mc
    from minicnn import data, train

    resume = _resume_checkpoint(args.resume) if args.resume else None
    if resume:
        _take_the_runs_settings(args, resume)
    model_name, dataset_name = args.model.lower(), args.dataset.lower().replace("_", "-")
    model_cls, dataset_cls = _model_and_dataset(model_name, dataset_name, args.optimizer)
    if args.scheduler.lower() not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {args.scheduler!r}; choose {', '.join(SCHEDULERS)}")
    if args.cuda_graph and args.device == "cpu":
        raise ValueError("--cuda-graph needs --device cuda")
    if args.early_stopping and not args.val_split:
        raise ValueError("--early-stopping watches the validation loss: give --val-split > 0")

    world = _mpi_world(args)
    mc.manual_seed(args.seed)
    model = model_cls()                                     # built after seeding: reproducible weights
    out = _run_folder(args, model_name, dataset_name, resume) if world is None or world.is_main else None
    if world is not None:
        out = world.gather_objects(out)[0]                  # rank 0 made it
    if args.init_from:
        if resume:
            raise ValueError("give --resume (continue a run) or --init-from (start from weights), not both")
        model.load_state_dict(_weights_of(args.init_from))
    if world is not None:
        from minicnn import distributed
        model = distributed.prepare(model, world)
    if args.device != "cpu":
        model.to(args.device)
    train_set, val_set, test_set = _datasets(args, dataset_cls)
    mean, std = dataset_cls.mean, dataset_cls.std
    normalize = data.Compose([data.ToFloat(), data.Normalize(mean, std)])
    train_tf = data.Compose([data.RandomCrop(28, padding=2), normalize]) if args.augment else normalize
    loader, val_loader, test_loader = _loaders(args, world, train_set, val_set, test_set, train_tf, normalize)

    lr = args.lr or DEFAULT_LR[args.optimizer.lower()]
    opt = _optimizer(mc, args.optimizer, model, lr, args.weight_decay)
    scheduler = _scheduler(mc, args.scheduler.lower(), opt, args.epochs, len(loader), lr)
    early = train.EarlyStopping("val_loss", patience=args.early_stopping) if args.early_stopping else None

    smoothing = f" with label smoothing {args.label_smoothing:g}" if args.label_smoothing else ""
    say = print if world is None or world.is_main else (lambda *a, **k: None)
    if world is not None:
        say(f"MPI: {world.size} ranks ({world.local_size} on this machine), batch {args.batch_size} = {world.size} x "
            f"{args.batch_size // world.size}, {mc.backend.cpu_threads()} thread(s) per rank")
    say(f"minicnn {mc.__version__}: training {type(model).__name__} ({model.num_parameters():,} parameters) on "
          f"{dataset_name}, {args.optimizer} lr {lr:g}, {args.scheduler} schedule, batch {args.batch_size}, "
          f"{args.epochs} epochs, backend {mc.backend.get_backend() if args.device == 'cpu' else 'cupy'}")
    say(f"  train: {len(train_set):,} images (loss{smoothing}); "
          + (f"validation: {len(val_set):,} images held out of the training set (val_loss{smoothing}, chooses "
             f"best.npz); " if val_set else "no validation (--val-split 0); ")
          + f"test: {len(test_set):,} images, scored once at the end (loss without smoothing)")
    started = time.perf_counter()
    meta = {"model": model_name, "dataset": dataset_name, "normalize": [mean, std],
            "classes": list(train_set.classes), "epochs": args.epochs,
            "settings": {name: getattr(args, name) for name in RUN_SETTINGS}}
    history = train.fit(model, mc.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), opt, loader, args.epochs,
                        val_loader=val_loader, scheduler=scheduler, checkpoint_dir=os.path.join(out, "checkpoints"),
                        every=args.every, resume=resume, cuda_graph=args.cuda_graph, meta=meta, early_stopping=early,
                        clip_grad_norm=args.clip_grad_norm, csv_log=os.path.join(out, "history.csv"),
                        distributed=world)
    wall = time.perf_counter() - started
    test = train.evaluate(model, test_loader, mc.nn.CrossEntropyLoss(), distributed=world)
    if world is not None and not world.is_main:
        return 0                                            # rank 0 writes the run folder

    meta["test_accuracy"] = test["accuracy"]
    mc.save({"model": model.to("cpu").state_dict(), "meta": meta}, os.path.join(out, "model.npz"))
    history.to_json(os.path.join(out, "history.json"))
    history.to_csv(os.path.join(out, "history.csv"))
    labels = {"train": f"train ({len(train_set):,} images{smoothing})",
              "val": f"validation ({len(val_set):,} held-out training images{smoothing})" if val_set else "validation"}
    _write_plots(model, test_set, normalize, history, out, meta, labels)
    best = (f"; best validation accuracy {history.best():.2%} (epoch "
            f"{history.val_accuracy.index(history.best()) + 1})" if val_set else "")
    print(f"test accuracy {test['accuracy']:.2%} (test loss {test['loss']:.4f}, without smoothing) after "
          f"{len(history)} epochs in {wall:.1f}s{best}; run folder {out}")
    return 0


SCHEDULERS = ("cosine", "step", "onecycle", "plateau", "none")


def _mpi_world(args):
    """The MPI world when mpiexec started this process with more than one rank, else None."""
    from minicnn import distributed
    if not distributed.launched_by_mpi():
        return None
    world = distributed.init(device=args.device)       # with cuda: a GPU per rank, NCCL for the gradients
    if args.batch_size % world.size:
        raise ValueError(f"--batch-size {args.batch_size} is the whole step's batch; it must divide among the "
                         f"{world.size} ranks")
    if args.cuda_graph:
        raise ValueError("--cuda-graph is not available with MPI ranks (the gradients are averaged between steps)")
    return world


def _loaders(args, world, train_set, val_set, test_set, train_tf, normalize):
    """The training, validation (or None) and test loaders; under MPI each rank's shards."""
    from minicnn import data
    if world is None:
        return (data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, transform=train_tf,
                                device=args.device),
                data.DataLoader(val_set, 1000, transform=normalize, device=args.device) if val_set else None,
                data.DataLoader(test_set, 1000, transform=normalize, device=args.device))
    from minicnn.distributed import DistributedSampler

    def shard(dataset, batch, transform, shuffle):
        sampler = DistributedSampler(len(dataset), world.size, world.rank, shuffle=shuffle, seed=args.seed, pad=shuffle)
        return data.DataLoader(dataset, batch, seed=args.seed, transform=transform, device=args.device, sampler=sampler)
    return (shard(train_set, args.batch_size // world.size, train_tf, True),
            shard(val_set, 1000, normalize, False) if val_set else None,
            shard(test_set, 1000, normalize, False))


def _model_and_dataset(model_name, dataset_name, optimizer):
    import minicnn as mc
    from minicnn import data
    model_cls = mc.models.get_model_class(model_name)
    dataset_cls = data.get_dataset_class(dataset_name)
    if model_cls.input_shape != (1, 28, 28):
        raise ValueError(f"model {model_name!r} expects {model_cls.input_shape} images, not {dataset_name}'s (1, 28, 28)")
    if optimizer.lower() not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd, adam or adamw")
    return model_cls, dataset_cls


def _datasets(args, dataset_cls):
    """(train, validation or None, test) with --train-limit, --test-limit and --val-split applied."""
    from minicnn import data
    train_set = dataset_cls(root=args.data, train=True)
    test_set = dataset_cls(root=args.data, train=False)
    if args.train_limit:
        train_set = data.Subset(train_set, np.arange(min(args.train_limit, len(train_set))))
    if args.test_limit:
        test_set = data.Subset(test_set, np.arange(min(args.test_limit, len(test_set))))
    if not args.val_split:
        return train_set, None, test_set
    n_val = int(len(train_set) * args.val_split)
    if n_val < 1 or len(train_set) - n_val < args.batch_size:
        raise ValueError(f"--val-split {args.val_split:g} of {len(train_set):,} images leaves {n_val:,} for validation "
                         f"and {len(train_set) - n_val:,} for training; each needs at least one image, training at "
                         f"least one batch ({args.batch_size})")
    train_set, val_set = data.random_split(train_set, [len(train_set) - n_val, n_val], seed=args.seed)
    return train_set, val_set, test_set


def _optimizer(mc, name, model, lr, weight_decay):
    if name.lower() == "sgd":
        return mc.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    cls = mc.optim.Adam if name.lower() == "adam" else mc.optim.AdamW
    return cls(model.parameters(), lr=lr, weight_decay=weight_decay)


def _scheduler(mc, name, opt, epochs, steps_per_epoch, lr):
    if name == "cosine":
        return mc.optim.CosineAnnealingLR(opt, epochs)
    if name == "step":
        return mc.optim.StepLR(opt, max(1, epochs // 3), 0.1)
    if name == "onecycle":
        return mc.optim.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    if name == "plateau":
        return mc.optim.ReduceLROnPlateau(opt, patience=2)
    return None


def _write_plots(model, test_set, normalize, history, out, meta, curve_labels=None):
    from minicnn import plot, train
    _, predicted = train.predict(model, normalize(test_set.data))
    plot.save_run_plots(model, history, test_set.data, test_set.targets, predicted, meta["classes"], out,
                        title=f"{meta['model']} on {meta['dataset']}", curve_labels=curve_labels)


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


def _take_the_runs_settings(args, checkpoint):
    """For `train --resume`: every run setting not given on this command line from the checkpoint's
    meta (its model, dataset, optimizer, schedule...), so that the run continues as it was started;
    a --model or --dataset other than the run's is refused (its weights could not continue)."""
    import minicnn as mc
    state = mc.load(checkpoint, keys=("meta", "epoch", "early_stopping"))     # fit reads the rest
    meta = state.get("meta")
    if not isinstance(meta, dict) or "model" not in meta:
        return                                            # not minicnn train's: fit says what does not fit
    saved = dict(meta.get("settings") or {})
    saved.setdefault("model", meta["model"])                # checkpoints from before settings were kept
    saved.setdefault("dataset", meta.get("dataset"))
    saved.setdefault("epochs", meta.get("epochs"))
    given = _options_given(getattr(args, "argv", None) or [])
    for name in ("model", "dataset"):
        if name in given and saved.get(name) is not None and \
                getattr(args, name).lower().replace("_", "-") != str(saved[name]).lower():
            raise ValueError(f"{args.resume} is a run of {saved['model']} on {saved['dataset']}: --{name} "
                             f"{getattr(args, name)} cannot continue it (start a new run, or --init-from its weights)")
    for name in RUN_SETTINGS:
        if name not in given and saved.get(name) is not None:
            setattr(args, name, saved[name])
    stopped = (state.get("early_stopping") or {}).get("stopped_epoch")
    if stopped is not None:
        raise ValueError(f"{args.resume} stopped early at epoch {stopped} (its validation loss had stopped improving): "
                         "the run is over; to train on, start a new run from its weights: minicnn train --init-from "
                         f"{args.resume}")
    done = state.get("epoch")
    if isinstance(done, (int, np.integer)) and done >= args.epochs:
        raise ValueError(f"{args.resume} has finished {done} epochs, and this run asks for {args.epochs} in all: "
                         f"give --epochs N with N > {done} to train on")


def _options_given(argv):
    """The run settings' names (argparse dests) spelled out in argv (no abbreviations are accepted)."""
    given = set()
    for name in RUN_SETTINGS:
        flag = "--" + name.replace("_", "-")
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            given.add(name)
    return given


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


def _read_images(paths, invert=False):
    """(N, 1, 28, 28) uint8 images and their ids from IDX files, .npy arrays, image files, folders of
    images and glob patterns; photos of any size or mode become 28x28 grayscale (a sentence on
    stderr says how)."""
    from minicnn import data
    arrays, ids, photos = [], [], []
    for path in paths:
        matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        if not matches:
            raise FileNotFoundError(f"{path}: no file matches")
        for match in matches:
            if os.path.isdir(match):
                found = sorted(f for f in os.listdir(match) if f.lower().endswith(data.folder.EXTENSIONS))
                if not found:
                    raise FileNotFoundError(f"{match}: no images ({', '.join(data.folder.EXTENSIONS)}) in the folder")
                photos += [os.path.join(match, f) for f in found]
            elif not os.path.exists(match):
                raise FileNotFoundError(f"{match}: no such file or folder")
            elif match.lower().endswith(data.folder.EXTENSIONS):
                photos.append(match)
            else:
                images = np.load(match, allow_pickle=False) if match.endswith(".npy") else data.read_idx(match, expected_ndim=3)
                images = images[:, None] if images.ndim == 3 else images
                if images.ndim != 4 or images.shape[1:] != (1, 28, 28) or images.dtype != np.uint8:
                    raise ValueError(f"{match}: expected uint8 images (N, 28, 28) or (N, 1, 28, 28), got "
                                     f"{images.dtype} {images.shape}")
                arrays.append(images)
                stem = os.path.basename(match) if len(paths) + len(matches) > 2 else ""
                ids += [f"{stem}:{i + 1}" if stem else str(i + 1) for i in range(len(images))]
    if photos:
        images, described = _photos_as_digits(photos)
        arrays.append(images)
        ids += [os.path.splitext(os.path.basename(p))[0] for p in photos]
        print(f"minicnn: {len(photos)} image file(s) ({described}) converted as for training: grayscale, padded "
              "to a square with their border colour, resized to 28x28" + (", inverted" if invert else ""),
              file=sys.stderr)
        if not invert and images.mean() > 127:
            print("minicnn: these images are mostly light; MNIST digits are light on dark: pass --invert for dark "
                  "ink on light paper", file=sys.stderr)
    images = np.concatenate(arrays)
    return (255 - images if invert else images), ids


def _photos_as_digits(paths):
    """Image files as (N, 1, 28, 28) uint8 grayscale, and a short description of what they were."""
    from PIL import Image, UnidentifiedImageError

    from minicnn import data
    out, kinds = [], {}
    for path in paths:
        try:
            with Image.open(path) as image:
                kinds[f"{image.width}x{image.height} {image.mode}"] = True
                gray = np.asarray(image.convert("L"))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: cannot read the image: {err}") from None
        h, w = gray.shape
        side = max(h, w)
        border = int(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
        square = np.full((side, side), border, np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[top:top + h, left:left + w] = gray
        out.append(data.Resize((28, 28))(square[None]))
    described = ", ".join(list(kinds)[:3]) + (", ..." if len(kinds) > 3 else "")
    return np.stack(out), described


def cmd_predict(args):
    from minicnn import data, train
    model, meta = _load_run(args.checkpoint)
    images, ids = _read_images(args.images, args.invert)
    x = data.Compose([data.ToFloat(), data.Normalize(*meta["normalize"])])(images)
    _, classes = train.predict(model, x)
    names = meta.get("classes")
    lines = ["id,label"] + [f"{i},{c}" for i, c in zip(ids, classes)]
    if names and names != [str(k) for k in range(len(names))]:
        lines = ["id,label,class"] + [f"{i},{c},{names[c]}" for i, c in zip(ids, classes)]
    text = "\n".join(lines) + "\n"
    if args.csv:
        from minicnn.checkpoint import atomic_write_bytes
        atomic_write_bytes(args.csv, text.encode())
        print(f"wrote {len(ids)} predictions to {args.csv}")
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------ lr-find

def cmd_lr_find(args):
    import minicnn as mc
    from minicnn import data, plot, train
    model_cls, dataset_cls = _model_and_dataset(args.model.lower(), args.dataset.lower().replace("_", "-"),
                                                args.optimizer)
    mc.manual_seed(args.seed)
    model = model_cls()
    train_set = dataset_cls(root=args.data, train=True)
    if args.train_limit:
        train_set = data.Subset(train_set, np.arange(min(args.train_limit, len(train_set))))
    normalize = data.Compose([data.ToFloat(), data.Normalize(dataset_cls.mean, dataset_cls.std)])
    loader = data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, transform=normalize)
    opt = _optimizer(mc, args.optimizer, model, args.start_lr, 0.0)
    result = train.lr_find(model, mc.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), opt, loader,
                           args.start_lr, args.end_lr, args.iters)
    plot.lr_finder(result, args.out, title=f"{model_cls.__name__} on {args.dataset}, {args.optimizer}, "
                                           f"batch {args.batch_size}")
    tried = f"{len(result.lrs)} batches from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}"
    end = " (stopped: the loss diverged)" if result.stopped_early else ""
    if result.suggestion is None:
        print(f"tried {tried}{end}: the loss never fell; try a larger --end-lr or more --iters. Plot: {args.out}")
    else:
        print(f"tried {tried}{end}; the loss falls fastest at lr {result.suggestion:.2g} (a good start; often "
              f"up to 10x below the rate where it diverges). Plot: {args.out}")
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
            "lr-find": cmd_lr_find, "gradcheck": cmd_gradcheck, "info": cmd_info}


def main(argv=None):
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv                                  # which options were given (train --resume)
        # Overflow and NaN are the run's business (fit stops a diverging run with one line, as
        # torch computes on without warnings), not NumPy warnings printed on the way.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"minicnn: error: {err} (see minicnn --help)", file=sys.stderr)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as err:
        print(f"minicnn: error: {str(err).strip()}", file=sys.stderr)
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
