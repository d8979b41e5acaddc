"""Results over seeds (clippo.tools.aggregate, ``clippo report RUN_DIR RUN_DIR ...``): the IQM as
rliable defines it, its bootstrap interval, the success count, and the report over real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from clippo.tools.aggregate import bootstrap_ci, iqm, seeds_markdown, summarize
from tests.helpers import run_cli


def test_iqm_drops_the_lowest_and_highest_quarter():
    # 10 values: floor(10/4) = 2 dropped at each end, the mean of the middle 6
    values = [-1000, 0, 1, 2, 3, 4, 5, 6, 100, 10_000]
    assert iqm(values) == pytest.approx(np.mean([1, 2, 3, 4, 5, 6]))
    # 5 values: one dropped at each end
    assert iqm([5, 1, 3, 2, 4]) == pytest.approx(3.0)
    # 3 values: nothing dropped (floor(3/4) = 0), the plain mean
    assert iqm([1, 2, 6]) == pytest.approx(3.0)


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (4, 5, 7, 10, 17):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_bootstrap_interval_brackets_the_iqm_and_is_reproducible():
    x = [500, 500, 500, 500, 500, 500, 500, 500, 241.9, 290.6]
    low, high = bootstrap_ci(x)
    assert low <= iqm(x) <= high
    assert low < 500 and high == 500  # some resamples hold 3+ failures, none goes above 500
    assert bootstrap_ci(x) == (low, high)  # a fixed seed
    assert bootstrap_ci([7.0] * 6) == (7.0, 7.0)
    # wider coverage, wider (or equal) interval
    low99, high99 = bootstrap_ci(x, confidence=0.99)
    assert low99 <= low and high99 >= high


def test_bootstrap_of_a_normal_sample_covers_its_centre():
    x = np.random.default_rng(1).normal(10.0, 1.0, size=40)
    low, high = bootstrap_ci(x, "mean")
    assert low < 10.0 < high
    assert high - low < 1.5  # about 4 standard errors (1/sqrt(40) each)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="statistic='max' is invalid"):
        bootstrap_ci([1, 2], "max")
    with pytest.raises(ValueError, match=r"confidence=1\.5 is invalid"):
        bootstrap_ci([1, 2], confidence=1.5)
    with pytest.raises(ValueError, match="no returns"):
        summarize([])


def test_summary_counts_successes_and_names_the_failed_seeds():
    s = summarize([500, 428.1, 500, 437.3], seeds=[11, 12, 13, 16], threshold=475)
    assert s.successes == 2
    assert s.failed_seeds == [12, 16]
    assert s.worst == pytest.approx(428.1)
    assert s.median == pytest.approx((437.3 + 500) / 2)
    assert summarize([1, 2]).successes is None


def fake_run(root: Path, seed: int, mean_return: float, **config) -> Path:
    """A run directory as `clippo train` leaves it, as far as the summary reads it."""
    run_dir = root / f"s{seed}"
    run_dir.mkdir(parents=True)
    values = {"env_id": "CartPole-v1", "seed": seed, "learning_rate": 0.002, **config}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(values))
    evaluation = {"mean_return": mean_return, "std_return": 0.0, "episodes": 20, "mean_length": 1.0, "returns": []}
    (run_dir / "eval.json").write_text(json.dumps(evaluation))
    return run_dir


def test_markdown_warns_when_the_runs_are_not_one_config(tmp_path):
    a = fake_run(tmp_path, 1, 500.0)
    b = fake_run(tmp_path, 2, 400.0, learning_rate=0.001)
    text = seeds_markdown([b, a], threshold=475)
    assert "differ in more than the seed** (learning_rate: 0.002, 0.001)" in text
    assert "| successes (final return >= 475) | 1 of 2 |" in text
    assert "| seeds below | 2 |" in text


def test_one_line_errors(tmp_path):
    a = fake_run(tmp_path / "x", 1, 500.0)
    b = fake_run(tmp_path / "y", 1, 500.0)
    code, _, err = run_cli(["report", str(a), str(b)])
    assert code != 0 and "seed(s) 1 appear in more than one run" in err and len(err.strip().splitlines()) == 1
    (b / "eval.json").unlink()
    code, _, err = run_cli(["report", str(a), str(b)])
    assert code != 0 and "has no final evaluation (eval.json)" in err
    code, _, err = run_cli(["report", str(a), str(tmp_path / "nowhere")])
    assert code != 0 and "does not exist" in err
    c = fake_run(tmp_path / "z", 2, 450.0)
    code, _, err = run_cli(["report", str(a), str(c), "--confidence", "95"])
    assert code != 0 and "--confidence=95.0 is invalid" in err
    code, _, err = run_cli(["report", str(a), str(c), "-o", str(tmp_path / "seeds.html")])
    assert code != 0 and "is Markdown" in err


def test_report_over_real_runs(tmp_path):
    """Three tiny CartPole runs through the command line, then the summary over them."""
    dirs = []
    for seed in (1, 2, 3):
        run_dir = tmp_path / f"run{seed}"
        code, _, err = run_cli(
            [
                "train",
                "CartPole-v1",
                "--seed",
                str(seed),
                "--run-dir",
                str(run_dir),
                "--total-steps",
                "512",
                "--num-envs",
                "4",
                "--num-steps",
                "64",
                "--eval-episodes",
                "3",
                "--no-tensorboard",
            ]
        )
        assert code == 0, err
        dirs.append(run_dir)
    returns = [json.loads((d / "eval.json").read_text())["mean_return"] for d in dirs]
    threshold = sorted(returns)[1]  # the median run and the best succeed, the worst does not (or ties)
    out = tmp_path / "seeds.md"
    code, _, err = run_cli(["report", *map(str, dirs), "--threshold", str(threshold), "-o", str(out)])
    assert code == 0, err
    text = out.read_text()
    successes = sum(r >= threshold for r in returns)
    assert f"| successes (final return >= {threshold:g}) | {successes} of 3 |" in text
    assert "| seeds | 1, 2, 3 |" in text
    assert "differ in more than the seed" not in text
    for seed, r in zip((1, 2, 3), returns, strict=True):
        assert f"| {seed} | {r:.1f}" in text
    # three seeds: nothing trimmed, the IQM is the mean
    assert f"| IQM (interquartile mean) | {np.mean(returns):.1f} |" in text
