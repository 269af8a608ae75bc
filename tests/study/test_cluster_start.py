"""What the study says when Ray does not start or cannot be reached (fast tier: Ray's start is
replaced by one that fails as Ray does; `test_cluster` starts real ones)."""

from __future__ import annotations

import pytest

from resnet_mnist.study import cluster as K

#: What Ray 2.60 raises (a bare Exception) when a new node's raylet has not registered in 30 s.
TIMED_OUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet "
    "failed to startup or the GCS has become overloaded."
)


CLUSTER = K.Where("10.0.0.9:6379", None)


@pytest.mark.parametrize(
    ("at", "raised", "message"),
    [
        (K.Where(None, 1), TIMED_OUT, "could not start an embedded Ray: its node did not start within"),
        (CLUSTER, TIMED_OUT, "could not reach the Ray cluster at 10.0.0.9:6379"),
        (CLUSTER, ConnectionError("no GCS"), "could not reach the Ray cluster at 10.0.0.9:6379: no GCS"),
    ],
)
def test_a_start_that_fails_is_a_cluster_error_naming_what(
    monkeypatch: pytest.MonkeyPatch, at: K.Where, raised: Exception, message: str
) -> None:
    def fails(**_: object) -> None:
        raise raised

    monkeypatch.setattr(K.ray, "init", fails)
    with pytest.raises(K.ClusterError) as info:
        K.RayEngine(at).__enter__()
    assert message in str(info.value)
    assert ("run the command again" in str(info.value)) == (raised is TIMED_OUT)


def test_any_other_failure_of_rays_start_is_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(**_: object) -> None:
        raise Exception("something else")  # noqa: TRY002 - as bare as Ray's own

    monkeypatch.setattr(K.ray, "init", fails)
    with pytest.raises(Exception, match="something else") as info:
        K.RayEngine(K.Where(None, 1)).__enter__()
    assert not isinstance(info.value, K.ClusterError)
