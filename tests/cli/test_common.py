"""What the verbs share: the command line `train --nproc`'s ranks get."""

from __future__ import annotations

from resnet_mnist.cli.common import drop_options


def test_drop_options_handles_both_spellings_and_flags() -> None:
    argv = ["train", "--nproc", "2", "--out=x", "--debug", "--lr", "0.1", "--preset_name", "p"]
    assert drop_options(argv, ("--nproc", "--out", "--preset-name"), ("--debug",)) == ["train", "--lr", "0.1"]
    assert drop_options(["train", "--nproc=2", "--lr", "0.1"], ("--nproc",)) == ["train", "--lr", "0.1"]
