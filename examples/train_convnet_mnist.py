"""ConvNet on MNIST with SGD, saving weights every epoch (the tutorial's recipe).
    python examples/train_convnet_mnist.py [EPOCHS]    (writes runs/convnet-mnist/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

run(mc.models.ConvNet(), "mnist", lambda params: mc.optim.SGD(params, lr=0.05, momentum=0.9), epochs_from_argv(5),
    "runs/convnet-mnist", every=1)
