"""ResNet18 with and without residual connections on MNIST, tracked in MLflow."""

__version__ = "0.1.0"
