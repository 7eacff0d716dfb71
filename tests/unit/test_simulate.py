"""The simulator with a known truth: seeded, valid events, and a ground truth that is right."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from foresight.events.validation import validate
from foresight.tools import simulate_process as proc
from foresight.tools.simulate import Setting, SimulationSummary, season_of, simulate

pytestmark = pytest.mark.unit

CUSTOMERS = 3_000


@pytest.fixture(scope="module", params=list(Setting))
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> SimulationSummary:
    setting: Setting = request.param
    return simulate(tmp_path_factory.mktemp(setting.value), setting, customers=CUSTOMERS, seed=5)


def _frames(summary: SimulationSummary) -> list[pl.DataFrame]:
    paths = [summary.events_path, summary.ground_truth_path]
    if summary.profiles_path is not None:
        paths.append(summary.profiles_path)
    return [pl.read_parquet(p) for p in paths]


@pytest.mark.parametrize("setting", list(Setting))
def test_one_seed_gives_the_same_files_another_seed_does_not(
    tmp_path: Path, setting: Setting
) -> None:
    first = simulate(tmp_path / "a", setting, customers=400, seed=3)
    again = simulate(tmp_path / "b", setting, customers=400, seed=3)
    other = simulate(tmp_path / "c", setting, customers=400, seed=4)
    for left, right in zip(_frames(first), _frames(again), strict=True):
        assert left.equals(right)
    assert not _frames(first)[0].equals(_frames(other)[0])


def test_events_validate_and_end_before_the_cutoff(world: SimulationSummary) -> None:
    events = pl.read_parquet(world.events_path)
    result = validate(events, now=world.cutoff)
    assert result.rejected.height == 0
    assert result.accepted.height == events.height == world.events
    assert result.accepted["event_id"].n_unique() == events.height
    assert events["timestamp"].max() < world.cutoff  # type: ignore[operator]
    # Every customer made a first purchase before the cutoff, so all are in the population.
    purchases = events.filter(pl.col("event_type") == "commerce.purchases")
    assert purchases["profile_id"].n_unique() == CUSTOMERS


def test_the_outcome_window_is_the_goal_window_of_foresight(world: SimulationSummary) -> None:
    # A 90-day goal covers the cutoff's day through day 90 after it, both inclusive.
    assert world.cutoff == datetime(2025, 1, 1, tzinfo=UTC)
    assert (world.window_days, world.outcome_days) == (90, 91)


def test_pure_truth_is_the_closed_form(tmp_path: Path) -> None:
    summary = simulate(tmp_path, Setting.PURE, customers=2_000, seed=8)
    truth = pl.read_parquet(summary.ground_truth_path)
    expected = truth["alive_at_cutoff"].to_numpy() * -np.expm1(
        -truth["lam"].to_numpy() * summary.outcome_days
    )
    np.testing.assert_allclose(truth["true_probability"].to_numpy(), expected, rtol=1e-9)
    dead = ~truth["alive_at_cutoff"].to_numpy()
    assert 0.2 < dead.mean() < 0.8  # both states are common: alive matters
    assert not truth.filter(pl.col("alive_at_cutoff").not_())["purchased"].any()


def test_realized_outcomes_follow_the_true_probabilities(world: SimulationSummary) -> None:
    truth = pl.read_parquet(world.ground_truth_path)
    p = truth["true_probability"].to_numpy()
    y = truth["purchased"].to_numpy()
    # Sum of independent Bernoullis: mean and spread known exactly.
    assert abs(y.sum() - p.sum()) < 4.5 * np.sqrt((p * (1 - p)).sum())
    for low, high in ((0.0, 0.2), (0.2, 0.6), (0.6, 1.0)):
        inside = (p > low) & (p <= high)
        assert inside.sum() > 200
        assert abs(y[inside].mean() - p[inside].mean()) < 4.5 * np.sqrt(
            (p[inside] * (1 - p[inside])).sum() / inside.sum() ** 2
        )


@pytest.mark.parametrize("setting", list(Setting))
def test_monte_carlo_of_the_window_matches_the_stated_probability(setting: Setting) -> None:
    """Re-simulate the outcome window 20,000 times for fixed customers alive at the cutoff."""
    rng = np.random.default_rng(21)
    history_days, outcome_days = 731, 91
    latents = proc.draw_latents(
        rng, 4_000, history_days, proc.Heterogeneity(), -0.1, 0.4 if setting is Setting.RICH else 0
    )
    season = season_of(setting, datetime(2023, 1, 1).date(), history_days + outcome_days)
    window = range(history_days, history_days + outcome_days)
    alive = np.ones(4_000, dtype=bool)
    stated = proc.true_probability(latents, season, alive, window)
    # Five customers spread over the range, so no constant answer can pass.
    chosen = np.array([int(np.argmin(np.abs(stated - q))) for q in (0.1, 0.3, 0.5, 0.7, 0.9)])
    assert np.ptp(stated[chosen]) > 0.7
    copies = 20_000
    index = np.repeat(chosen, copies)
    bought = proc.realize_window(rng, latents.take(index), season, alive[index], window)
    empirical = bought.reshape(len(chosen), copies).mean(axis=1)
    p = stated[chosen]
    tolerance = 4.5 * np.sqrt(p * (1 - p) / copies)  # at most 0.016
    np.testing.assert_array_less(np.abs(empirical - p), tolerance)
    # A customer who dropped out never buys again.
    assert not proc.realize_window(
        rng, latents.take(index[:1_000]), season, np.zeros(1_000, dtype=bool), window
    ).any()


def test_rich_signals_are_there_and_modest(tmp_path: Path) -> None:
    summary = simulate(tmp_path, Setting.RICH, customers=CUSTOMERS, seed=9)
    assert summary.profiles_path is not None
    truth = pl.read_parquet(summary.ground_truth_path)
    profiles = pl.read_parquet(summary.profiles_path)
    tier = profiles["loyalty_tier"].replace_strict({"none": 0, "silver": 1, "gold": 2}).to_numpy()
    log_rate = np.log(truth["lam"].to_numpy())
    assert 0.2 < np.corrcoef(tier, log_rate)[0, 1] < 0.5  # documented: 0.4 on the latent score
    # Browsing in the last 60 days says who is still alive (but not perfectly).
    events = pl.read_parquet(summary.events_path)
    recent = (
        events.filter(
            (pl.col("event_type") == "web.webpagedetails.pageViews")
            & (pl.col("timestamp") >= datetime(2024, 11, 2, tzinfo=UTC))
        )
        .group_by("profile_id")
        .len()
    )
    browsed = truth.join(recent, on="profile_id", how="left").with_columns(
        pl.col("len").fill_null(0) > 0
    )
    alive_rate = browsed.filter("alive_at_cutoff")["len"].mean()
    dead_rate = browsed.filter(pl.col("alive_at_cutoff").not_())["len"].mean()
    assert alive_rate is not None and dead_rate is not None
    assert float(alive_rate) > 2 * float(dead_rate) and float(dead_rate) > 0  # type: ignore[arg-type]
    assert {"message.opened", "commerce.productViews"} <= set(events["event_type"].unique())


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    from foresight.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="customers"):
        simulate(tmp_path, customers=0)
    with pytest.raises(InvalidArgument, match="window_days"):
        simulate(tmp_path, window_days=0)


def test_pure_is_bgnbd_its_posterior_predicts_the_outcomes(tmp_path: Path) -> None:
    """The textbook BG/NBD prediction with the generating parameters, from the purchase
    history alone, is calibrated on the simulated outcomes and ranks between recency and
    the oracle (which also knows who is alive)."""
    from sklearn.metrics import roc_auc_score

    from bench.simulator_bench import posterior_with_true_parameters, purchase_summary

    summary = simulate(tmp_path, Setting.PURE, customers=6_000, seed=12)
    rfm = purchase_summary(pl.read_parquet(summary.events_path), summary)
    truth = pl.read_parquet(summary.ground_truth_path).join(rfm, on="profile_id")
    posterior = posterior_with_true_parameters(truth, summary.outcome_days)
    y = truth["purchased"].to_numpy()
    assert abs(y.sum() - posterior.sum()) < 4.5 * np.sqrt((posterior * (1 - posterior)).sum())
    for low, high in ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0)):
        inside = (posterior > low) & (posterior <= high)
        assert inside.sum() > 300
        assert abs(y[inside].mean() - posterior[inside].mean()) < 0.04
    auc = roc_auc_score(y, posterior)
    assert roc_auc_score(y, truth["recency_score"].to_numpy()) < auc
    assert auc < roc_auc_score(y, truth["true_probability"].to_numpy())
