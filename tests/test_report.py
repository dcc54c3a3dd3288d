"""results.json and its statistics: Wilson conditions, the paired bootstrap, rendering."""
import math
import random
import statistics

import pytest

from chatforge.common import independent_bootstrap, paired_bootstrap
from chatforge.report import condition, experiment, fmt_rate, load_results, results_table, update_results


def test_paired_bootstrap_matches_the_normal_interval_of_a_mean_difference():
    """For n independent pairs the bootstrap interval of mean(a - b) approaches mean +- 1.96 sd / sqrt(n)."""
    rng = random.Random(3)
    a = [float(rng.random() < 0.7) for _ in range(600)]
    b = [float(rng.random() < 0.5) for _ in range(600)]
    d, lo, hi = paired_bootstrap(a, b, n_boot=4000, seed=1)
    diffs = [x - y for x, y in zip(a, b)]
    se = statistics.pstdev(diffs) / math.sqrt(len(diffs))
    assert d == pytest.approx(statistics.fmean(diffs))
    assert lo == pytest.approx(d - 1.96 * se, abs=0.01) and hi == pytest.approx(d + 1.96 * se, abs=0.01)


def test_independent_bootstrap_matches_the_normal_interval_of_two_proportions():
    """Two groups of different people: the interval approaches d +- 1.96 sqrt(p1 q1 / n1 + p2 q2 / n2)."""
    rng = random.Random(5)
    a = [float(rng.random() < 0.6) for _ in range(500)]
    b = [float(rng.random() < 0.4) for _ in range(400)]
    d, lo, hi = independent_bootstrap(a, range(500), b, range(500, 900), n_boot=4000, seed=2)
    pa, pb = statistics.fmean(a), statistics.fmean(b)
    se = math.sqrt(pa * (1 - pa) / len(a) + pb * (1 - pb) / len(b))
    assert d == pytest.approx(pa - pb)
    assert lo == pytest.approx(d - 1.96 * se, abs=0.012) and hi == pytest.approx(d + 1.96 * se, abs=0.012)
    assert independent_bootstrap([1] * 20, range(20), [0] * 20, range(20, 40)) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_pairing_and_clusters():
    # identical conditions: the difference is exactly 0 with a zero-width interval
    a = [1, 0, 1, 1, 0] * 20
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    # clusters of perfectly correlated items: the interval must be wider than if items were independent
    rng = random.Random(0)
    people = [rng.random() < 0.5 for _ in range(40)]
    a = [float(p) for p in people for _ in range(5)]
    b = [0.0] * len(a)
    clusters = [i for i in range(40) for _ in range(5)]
    _, lo_i, hi_i = paired_bootstrap(a, b)
    _, lo_c, hi_c = paired_bootstrap(a, b, clusters)
    assert hi_c - lo_c > 1.8 * (hi_i - lo_i)
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_experiment_object_and_results_file(tmp_path):
    exp = experiment({"with": [1, 1, 1, 0] * 25, "without": [0, 0, 1, 0] * 25}, [("with", "without")], extra=1)
    c = exp["conditions"]["with"]
    assert (c["k"], c["n"], c["rate"]) == (75, 100, 0.75) and c["ci"][0] < 0.75 < c["ci"][1]
    assert condition([])["n"] == 0
    assert fmt_rate(condition([1, 1, 1, 0])) == "75.0% [30.1, 95.4] (3/4)" and fmt_rate(condition([])) == "n/a (n=0)"
    d = exp["diffs"]["with - without"]
    assert d["delta"] == pytest.approx(0.5) and d["ci"][0] > 0.3 and d["method"] == "paired bootstrap"
    update_results(tmp_path, "demo", exp)
    update_results(tmp_path, "other", {"conditions": {}, "diffs": {}})
    res = load_results(tmp_path)
    assert set(res) == {"demo", "other"} and res["demo"]["extra"] == 1
    md = results_table(res["demo"])
    assert "75.0% [" in md and "+50.0 points" in md
    none = experiment({"a": [1, 0] * 10, "b": [0, 1] * 10}, [("a", "b")])
    assert "contains 0" in results_table(none)
