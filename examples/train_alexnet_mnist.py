"""AlexNet adapted to MNIST with SGD (lr 0.01, momentum 0.9, cosine schedule), saving weights
every epoch. Heavy on a CPU (about 0.9 GFLOP per training image): about 35 minutes per epoch
on 2 cores.   python examples/train_alexnet_mnist.py [EPOCHS]    (writes runs/alexnet-mnist/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(2)
run(mc.models.AlexNetMNIST(), "mnist", lambda params: mc.optim.SGD(params, lr=0.01, momentum=0.9), epochs,
    "runs/alexnet-mnist", batch_size=128, every=1,
    scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
