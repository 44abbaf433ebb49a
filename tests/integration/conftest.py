"""Fixtures the integration modules share: one Ray session per module (the tiny base model,
built once per test run, is in tests/conftest.py).

A module says how its Ray session starts with a marker (default: stardss's own `init_ray` for
the demo job on a local 2-CPU Ray, the environment the commands run in):

    pytestmark = pytest.mark.ray_session(env={"WANDB_MODE": "offline"})   # + process env
    pytestmark = pytest.mark.ray_session(plain=True)   # bare ray.init(num_cpus=2)

Environment variables in `env` are set before Ray starts, so every Ray process (Train workers,
actors) inherits them, and restored when the module ends.
"""
import pytest
import ray

from stardss.cluster.resources import init_ray
from stardss.config import load_job
from tests.helpers import DEMO_JOB


def pytest_configure(config):
    config.addinivalue_line("markers", "ray_session(plain=False, env=None): how the module's "
                            "Ray session starts (tests/integration/conftest.py)")


@pytest.fixture(scope="module")
def ray_session(request):
    marker = request.node.get_closest_marker("ray_session")
    opts = dict(marker.kwargs) if marker else {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (opts.get("env") or {}).items():
            mp.setenv(k, v)
        if opts.get("plain"):
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        else:
            job = load_job(DEMO_JOB, ["model.name_or_path=unused"])
            init_ray(job.ray, job.train)
        yield
        ray.shutdown()
