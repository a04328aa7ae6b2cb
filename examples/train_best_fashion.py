"""The Fashion-MNIST model: FashionCNN (three conv + batch-norm blocks) with Adam 1e-3, a cosine
schedule, horizontal flips, 15 epochs.   python examples/train_best_fashion.py [EPOCHS]
(writes runs/best-fashion/). Earlier attempt: MnistCNN, same optimizer, 10 epochs: 91.71 %."""
import minicnn as mc
from _recipe import epochs_from_argv, run

epochs = epochs_from_argv(15)
run(mc.models.FashionCNN(), "fashion-mnist", lambda params: mc.optim.Adam(params, lr=1e-3), epochs,
    "runs/best-fashion", batch_size=128, augment=mc.data.RandomHorizontalFlip(0.5),
    scheduler_factory=lambda opt: mc.optim.CosineAnnealingLR(opt, epochs))
