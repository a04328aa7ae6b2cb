"""ConvNet on MNIST, saving weights every epoch. The tutorial trained it with plain SGD
(lr 0.05, momentum 0.9), which reached 98.07 % in 5 epochs here: its two dropout layers of 0.5 on
60- and 20-unit layers slow it down. Adam with a cosine schedule does better.
    python examples/train_convnet_mnist.py [EPOCHS]    (writes runs/convnet-mnist/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(8)
run(mc.models.ConvNet(), "mnist", lambda params: mc.optim.Adam(params, lr=2e-3), epochs, "runs/convnet-mnist",
    every=1, scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
