"""AlexNet adapted to MNIST with SGD, saving weights every epoch. Heavy on a CPU (about 0.9
GFLOP per image for training): expect hours per epoch on 2 cores.
    python examples/train_alexnet_mnist.py [EPOCHS]    (writes runs/alexnet-mnist/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

run(mc.models.AlexNetMNIST(), "mnist", lambda params: mc.optim.SGD(params, lr=0.01, momentum=0.9),
    epochs_from_argv(2), "runs/alexnet-mnist", batch_size=128, every=1)
