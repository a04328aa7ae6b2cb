"""The strongest small recipe tried here for Fashion-MNIST: MnistCNN with Adam 1e-3 and a cosine
schedule, no augmentation (with random shifts and flips it underfit: 91.14 % after 12 epochs).
    python examples/train_best_fashion.py [EPOCHS]    (writes runs/best-fashion/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(10)
run(mc.models.MnistCNN(), "fashion-mnist", lambda params: mc.optim.Adam(params, lr=1e-3), epochs,
    "runs/best-fashion", batch_size=128, scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
