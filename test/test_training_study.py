"""The study's statistics and its localisation ceiling, on hand-made scores and undrawn scenes (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from prune2drive_ros.data import testbed_scenes as T
from prune2drive_ros.training import study
from prune2drive_ros.training.testbed import DEV_SEED


def test_every_method_prunes_at_one_layer_and_divprune_also_at_its_own() -> None:
    runs = study.study_runs(["none", "tfps", "divprune", "random"], [0.1], random_seeds=5)
    assert {r.layer for r in runs if r.name != "divprune-K0-r0.1"} == {study.STUDY_LAYER}
    assert [r.layer for r in runs if r.name == "divprune-K0-r0.1"] == [0]
    assert sorted(r.seed for r in runs if r.method == "random") == [0, 1, 2, 3, 4]
    assert {r.row for r in runs if r.method == "random"} == {"random-r0.1"}


def test_resamples_draw_whole_scenes() -> None:
    counts = study.resample_counts(scenes=7, resamples=300)
    assert counts.shape == (300, 7)
    assert (counts.sum(axis=1) == 7).all()  # each resample draws as many scenes as there are
    assert (counts == 0).any() and (counts > 1).any()  # with replacement
    assert np.array_equal(counts, study.resample_counts(7, 300)), "one seed, one matrix for every run"


def test_paired_difference_cancels_what_both_runs_share() -> None:
    """Scenes differ a lot in difficulty; two runs that differ on one question per scene are told apart by
    the paired interval even though their own intervals overlap."""
    rng = np.random.default_rng(0)
    base = [[float(x) for x in rng.random(15) < p] for p in rng.uniform(0.2, 0.9, size=30)]
    worse = [[0.0, *scene[1:]] if scene[0] else [*scene[:-1], 0.0] for scene in base]
    counts = study.resample_counts(len(base), 2000)
    same = study.paired_difference(base, base, counts)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    d = study.paired_difference(worse, base, counts)
    assert d["diff"] == pytest.approx(study.metric(worse) - study.metric(base)) and d["diff"] < 0
    assert d["hi"] < 0, d  # the paired interval excludes 0 ...
    lo_base, _ = study.interval(base, counts)
    _, hi_worse = study.interval(worse, counts)
    assert hi_worse > lo_base  # ... where comparing the two runs' own intervals would not


def test_mean_of_draws_averages_each_question() -> None:
    draws = [study.Scored(mc=[[1.0, 0.0], [1.0]], kinds=[["count", "count"], ["presence"]], f1=[[], [0.5]]),
             study.Scored(mc=[[0.0, 0.0], [1.0]], kinds=[["count", "count"], ["presence"]], f1=[[], [1.0]])]
    for d in draws:
        d.cones_seen, d.cone_tokens_kept, d.kept_per_view = [1.0, 2.0], [1.0, 2.0], [6.0] * 6
    row = study.mean_of_draws(draws)
    assert row.mc == [[0.5, 0.0], [1.0]] and row.f1 == [[], [0.75]]


def test_localising_to_the_token_cannot_meet_a_16_pixel_match_at_8x8() -> None:
    """The ceiling the README quotes: naming the centre of the right patch almost never falls within 16 px
    at 8 x 8 tokens per view; it takes a far finer grid."""
    scenes = T.make_scenes(30, DEV_SEED, draw=False)
    ceiling = {grid: study.patch_centre_ceiling(scenes, grid) for grid in (8, 27, 64)}
    assert ceiling[8] < 6.0, ceiling
    assert ceiling[8] < ceiling[27] < ceiling[64], ceiling
    assert ceiling[64] > 60.0, ceiling


def test_precision_intervals_resample_whole_keyframes() -> None:
    """Two precisions that disagree on every question of a few keyframes: resampling keyframes keeps those
    questions together, so its interval is wider than one that treats the questions as independent."""
    from prune2drive_ros.training import precision

    base, other = {}, {}
    for frame in range(20):
        for n in range(15):
            qid = f"scene{frame}_sample{frame}_{n}"
            base[qid] = 1.0
            other[qid] = 0.0 if frame < 3 else 1.0  # three keyframes lost whole
    d = precision.paired_difference(base, other, resamples=2000)
    assert d["questions"] == 300 and d["keyframes"] == 20 and d["changed"] == 45
    assert d["difference"] == pytest.approx(-0.15)
    low, high = d["ci95"]
    assert low < -0.15 < high <= 0.0
    flat = np.percentile([np.random.default_rng(k).choice(np.r_[np.zeros(255), -np.ones(45)], 300).mean()
                          for k in range(2000)], [2.5, 97.5])
    assert high - low > 1.5 * (flat[1] - flat[0]), (d["ci95"], flat)
    assert precision.keyframe_of("scene1_sample7_12") == "scene1_sample7"
