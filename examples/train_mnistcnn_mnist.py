"""The Keras-example MnistCNN on MNIST with Adam 1e-3, batch 128.
    python examples/train_mnistcnn_mnist.py [EPOCHS]   (writes runs/mnistcnn-mnist/)"""
import minicnn as mc
from _recipe import epochs_from_argv, run

run(mc.models.MnistCNN(), "mnist", lambda params: mc.optim.Adam(params, lr=1e-3), epochs_from_argv(6),
    "runs/mnistcnn-mnist", batch_size=128)
