"""Temperature scaling: the fitted T, the calibration error, and the way back to T = 1."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_mnist.core import calibration as C
from resnet_mnist.core.model import DigitClassifier, build_resnet


def sampled(temperature: float, n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits / temperature): data whose true temperature
    is known."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, 10, generator=generator)
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("truth", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at(truth: float) -> None:
    logits, labels = sampled(truth)
    assert C.fit_temperature(logits, labels) == pytest.approx(truth, rel=0.05)


def test_calibration_lowers_the_error_of_an_over_confident_model() -> None:
    logits, labels = sampled(2.0)  # the network's logits are twice too large: over-confident
    before = C.expected_calibration_error(C.calibrated(logits, 1.0), labels)
    after = C.expected_calibration_error(C.calibrated(logits, C.fit_temperature(logits, labels)), labels)
    assert before > 0.1 and after < 0.02 and after < before / 5


def test_the_error_of_a_model_that_is_always_right_and_sure_is_zero() -> None:
    labels = torch.arange(10).repeat(5)
    sure = torch.nn.functional.one_hot(labels, 10).float()
    assert C.expected_calibration_error(sure, labels) == pytest.approx(0.0)
    wrong = torch.nn.functional.one_hot((labels + 1) % 10, 10).float()
    assert C.expected_calibration_error(wrong, labels) == pytest.approx(1.0)


@settings(derandomize=True, database=None, max_examples=50, deadline=None)
@given(
    temperature=st.floats(0.5, 10.0),  # below, float32 probabilities of such logits underflow
    seed=st.integers(0, 2**31 - 1),
)
def test_the_probabilities_before_calibration_are_recovered_from_those_after(
    temperature: float, seed: int
) -> None:
    logits = 4.0 * torch.randn(8, 10, generator=torch.Generator().manual_seed(seed))
    after = C.calibrated(logits, temperature)
    before = C.uncalibrated(after, temperature)
    # where the calibrated probability did not underflow, the way back is exact
    assert torch.allclose(before, torch.softmax(logits, dim=1), atol=1e-4)
    assert torch.equal(before.argmax(1), after.argmax(1))  # calibration changes no answer


def test_the_served_model_divides_by_its_temperature() -> None:
    torch.manual_seed(0)
    network = build_resnet(18, True).eval()
    preprocess = torch.nn.Identity()
    images = torch.randn(4, 1, 32, 32)
    plain = DigitClassifier(network, preprocess).eval()
    cooled = DigitClassifier(network, preprocess, temperature=2.0).eval()
    with torch.no_grad():
        logits = network(images)
        assert torch.allclose(plain(images), torch.softmax(logits, 1), atol=1e-6)
        assert torch.allclose(cooled(images), torch.softmax(logits / 2.0, 1), atol=1e-6)
    assert float(cooled.state_dict()["temperature"]) == 2.0  # exported with the weights
