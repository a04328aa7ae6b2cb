"""The steps every example shares: load a dataset, train with fit, evaluate, save plots.
Each example script is the recipe of one tutorial network; this file is the plumbing.
MINICNN_DEVICE=cuda runs an example on the GPU (MINICNN_CUDA_GRAPH=1: one CUDA graph per step)."""
import os
import sys
import time


import minicnn as mc
from minicnn import data, plot, train


def run(model, dataset, optimizer_factory, epochs, out, batch_size=64, augment=None, val_fraction=0.0,
        scheduler_factory=None, every=1, seed=0, label_smoothing=0.0):
    """Train ``model`` on MNIST or Fashion-MNIST and write history, checkpoints and plots to ``out``."""
    device = os.environ.get("MINICNN_DEVICE", "cpu")
    graph = os.environ.get("MINICNN_CUDA_GRAPH", "0") == "1"
    print(mc.summary(model, (1, 28, 28)))
    model.to(device)
    mc.manual_seed(seed)
    train_set = data.get_dataset(dataset, train=True)
    test_set = data.get_dataset(dataset, train=False)
    mean, std = type(train_set).mean, type(train_set).std
    normalize = data.Compose([data.ToFloat(), data.Normalize(mean, std)])
    val_set = test_set
    if val_fraction:
        n_val = int(len(train_set) * val_fraction)
        train_set, val_set = data.random_split(train_set, [len(train_set) - n_val, n_val], seed=seed)
    transform = data.Compose([augment, normalize]) if augment else normalize
    loader = data.DataLoader(train_set, batch_size, shuffle=True, seed=seed, transform=transform, device=device)
    val_loader = data.DataLoader(val_set, 1000, transform=normalize, device=device)
    optimizer = optimizer_factory(model.parameters())
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    started = time.perf_counter()
    loss_fn = mc.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = train.fit(model, loss_fn, optimizer, loader, epochs, val_loader=val_loader, scheduler=scheduler,
                        checkpoint_dir=os.path.join(out, "checkpoints"), every=every, cuda_graph=graph)
    test = train.evaluate(model, data.DataLoader(test_set, 1000, transform=normalize, device=device))
    print(f"test accuracy {test['accuracy']:.2%}, best validation accuracy {history.best():.2%}, "
          f"{time.perf_counter() - started:.0f}s")
    history.to_json(os.path.join(out, "history.json"))
    history.to_csv(os.path.join(out, "history.csv"))
    _, predicted = train.predict(model, mc.backend.device_converter(device)(normalize(test_set.data)))
    model.to("cpu")
    plot.save_run_plots(model, history, test_set.data, test_set.targets, predicted, test_set.classes, out,
                        title=f"{type(model).__name__} on {dataset}")
    mc.save(model.state_dict(), os.path.join(out, "weights.npz"))
    return history, test


def epochs_from_argv(default):
    return int(sys.argv[1]) if len(sys.argv) > 1 else default
