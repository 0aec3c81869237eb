"""The "poolrun" joblib backend: joblib.Parallel and scikit-learn's n_jobs paths on poolrun
workers."""

from __future__ import annotations

import os

import pytest

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402

import poolrun  # noqa: E402
import poolrun.joblib  # noqa: E402
from conftest import live_workers, wait_until  # noqa: E402
from dropin_funcs import pid  # noqa: E402
from funcs import segfault_on, square  # noqa: E402

poolrun.joblib.register()


@pytest.fixture(autouse=True)
def stop_kept_workers():
    yield
    poolrun.joblib.shutdown()


def _blas_threads(_):
    from threadpoolctl import threadpool_info

    return os.environ["OMP_NUM_THREADS"], sorted({i["num_threads"] for i in threadpool_info()})


def test_parallel_runs_on_poolrun_workers():
    with joblib.parallel_config(backend="poolrun", n_jobs=2):
        pids = joblib.Parallel()(joblib.delayed(pid)(i) for i in range(40))
        squares = joblib.Parallel()(joblib.delayed(square)(i) for i in range(100))
        lambdas = joblib.Parallel()(joblib.delayed(lambda x: x + 1)(i) for i in range(5))
    assert os.getpid() not in pids and len(set(pids)) >= 1
    assert squares == [i * i for i in range(100)]
    assert lambdas == [1, 2, 3, 4, 5]  # cloudpickled, as loky does


def test_workers_are_kept_between_calls_until_shutdown():
    with joblib.parallel_config(backend="poolrun", n_jobs=2):
        first = set(joblib.Parallel()(joblib.delayed(pid)(i) for i in range(20)))
    with joblib.parallel_config(backend="poolrun", n_jobs=2):
        second = set(joblib.Parallel()(joblib.delayed(pid)(i) for i in range(20)))
    assert second <= {*first, *second} and first & second  # the same processes served both
    poolrun.joblib.shutdown()
    assert wait_until(lambda: not live_workers())


def test_worker_threads_are_limited_as_joblib_expects():
    import numpy  # noqa: F401  (loads the BLAS the workers report on)

    expected = str(max(joblib.cpu_count() // 2, 1))
    with joblib.parallel_config(backend="poolrun", n_jobs=2):
        seen = joblib.Parallel()(joblib.delayed(_blas_threads)(i) for i in range(4))
    with joblib.parallel_config(backend="poolrun", n_jobs=2, inner_max_num_threads=1):
        inner = joblib.Parallel()(joblib.delayed(_blas_threads)(i) for i in range(4))
    assert {env for env, _ in seen} == {expected}
    assert all(threads in ([], [int(expected)]) for _, threads in seen)
    assert {env for env, _ in inner} == {"1"}


def test_cross_val_score_equals_n_jobs_1():
    X, y = make_classification(n_samples=300, n_features=10, random_state=0)
    model = LogisticRegression(max_iter=500)
    serial = cross_val_score(model, X, y, cv=5, n_jobs=1)
    with joblib.parallel_config(backend="poolrun"):
        parallel = cross_val_score(model, X, y, cv=5, n_jobs=2)
    assert list(parallel) == list(serial)


def test_grid_search_and_random_forest():
    X, y = make_classification(n_samples=200, n_features=8, random_state=1)
    grid = {"C": [0.1, 1.0, 10.0]}
    serial = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="poolrun", n_jobs=2):
        search = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=2).fit(X, y)
        forest = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=2).fit(X, y)
    assert search.best_params_ == serial.best_params_
    assert list(search.cv_results_["mean_test_score"]) == list(
        serial.cv_results_["mean_test_score"]
    )
    reference = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=1).fit(X, y)
    assert (forest.predict(X) == reference.predict(X)).all()


def test_worker_crash_is_a_clear_error_for_that_task():
    crash = segfault_on(3)
    with (
        joblib.parallel_config(backend="poolrun", n_jobs=2),
        pytest.raises(poolrun.TaskFailed, match="SIGSEGV"),
    ):
        joblib.Parallel(batch_size=1)(joblib.delayed(crash)(i) for i in range(8))
    with joblib.parallel_config(backend="poolrun", n_jobs=2):  # and the next call works
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_bad_backend_options_fail_in_parallel_config():
    with pytest.raises(TypeError, match="unknown option"):
        joblib.parallel_config(backend="poolrun", colour="red")


def test_batches_are_sized_from_the_workers_own_timing(monkeypatch):
    """joblib's auto-batching doubles a batch a step (1, 1, 1, 1, 2, 2, ...); poolrun's
    workers time each batch, so the second wave of batches is already near the target."""
    sizes = []
    submit = poolrun.joblib.PoolrunBackend.submit

    def recording(self, func, callback=None):
        sizes.append(len(func))
        return submit(self, func, callback)

    monkeypatch.setattr(poolrun.joblib.PoolrunBackend, "submit", recording)
    with joblib.parallel_config(backend="poolrun", n_jobs=2):
        squares = joblib.Parallel()(joblib.delayed(square)(i) for i in range(20_000))
    assert squares == [i * i for i in range(20_000)]
    assert sizes[:4] == [1, 1, 1, 1]  # before anything came back: joblib's own start
    assert max(sizes[4:8]) >= 100  # joblib's own rule would still be at 2


def test_batch_size_is_the_target_over_the_measured_time_per_task():
    backend = poolrun.joblib.PoolrunBackend(target_batch_seconds=0.05)
    backend._task_seconds = 20e-6
    assert backend.compute_batch_size() == 2500
    backend._task_seconds = 1.0  # tasks longer than the target go one a batch
    assert backend.compute_batch_size() == 1
