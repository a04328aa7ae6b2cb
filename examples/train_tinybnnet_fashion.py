"""TinyBNNet on Fashion-MNIST with Adam and a 10% validation split.
    python examples/train_tinybnnet_fashion.py [EPOCHS] (writes runs/tinybnnet-fashion/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

run(mc.models.TinyBNNet(), "fashion-mnist", lambda params: mc.optim.Adam(params, lr=3e-3), epochs_from_argv(5),
    "runs/tinybnnet-fashion", val_fraction=0.1)
