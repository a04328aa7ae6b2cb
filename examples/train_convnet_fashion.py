"""ConvNet (batch norm + dropout) on Fashion-MNIST with Adam and random shifts.
    python examples/train_convnet_fashion.py [EPOCHS]  (writes runs/convnet-fashion/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(10)
run(mc.models.ConvNet(), "fashion-mnist", lambda params: mc.optim.Adam(params, lr=1e-3), epochs,
    "runs/convnet-fashion", augment=mc.data.RandomCrop(28, padding=2),
    scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
