"""ConvNet on MNIST with SGD, saving weights every epoch. The tutorial's plain SGD (lr 0.05,
momentum 0.9) reached 98.07 % in 5 epochs here (its two dropout layers of 0.5 on 60- and 20-unit
layers slow it down); with Nesterov momentum and a cosine schedule over 8 epochs: 99.15 % (87 s).
Adam 2e-3 with the same schedule: 99.13 %.
    python examples/train_convnet_mnist.py [EPOCHS]    (writes runs/convnet-mnist/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(8)
run(mc.models.ConvNet(), "mnist", lambda params: mc.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    epochs, "runs/convnet-mnist", every=1, scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
