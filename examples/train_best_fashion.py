"""The strongest small recipe here for Fashion-MNIST: MnistCNN with random shifts and flips,
Adam 1e-3 with a cosine schedule.
    python examples/train_best_fashion.py [EPOCHS]    (writes runs/best-fashion/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(12)
augment = mc.data.Compose([mc.data.RandomCrop(28, padding=2), mc.data.RandomHorizontalFlip(0.5)])
run(mc.models.MnistCNN(), "fashion-mnist", lambda params: mc.optim.Adam(params, lr=1e-3), epochs,
    "runs/best-fashion", batch_size=128, augment=augment,
    scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
