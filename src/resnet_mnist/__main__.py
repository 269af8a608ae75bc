"""`python -m resnet_mnist …` is the `resnet-mnist` CLI (what torchrun starts on every rank)."""

from resnet_mnist.cli.app import main

main()
