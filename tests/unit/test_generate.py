"""Synthetic generator: schema, determinism, planted personas and outcomes."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from foresight.errors import InvalidArgument
from foresight.events.readers import read_batches
from foresight.events.schema import EVENT_SCHEMA, KNOWN_EVENT_TYPES
from foresight.events.validation import validate
from foresight.tools.generate import PERSONAS, GenerateSummary, generate

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GenerateSummary:
    return generate(tmp_path_factory.mktemp("gen"), profiles=3_000, seed=11)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_and_schema(generated: GenerateSummary) -> None:
    events = pl.read_parquet(generated.events_path)
    assert events.schema == EVENT_SCHEMA
    assert events.height == generated.events
    assert 15 <= generated.events / generated.profiles <= 25
    assert events["event_id"].n_unique() == events.height
    assert set(events["event_type"].unique()) == set(KNOWN_EVENT_TYPES)
    assert set(events["channel"].unique()) == {"web", "mobile", "email", "store"}
    assert events.select(pl.col("timestamp").max() < generated.ingest_now).item()
    assert events.select(pl.col("timestamp").min() >= generated.start).item()
    purchases = events.filter(pl.col("event_type") == "commerce.purchases")
    assert purchases["value"].null_count() == 0
    assert purchases.select(pl.col("quantity").min() >= 1).item()
    assert events.select(pl.col("attributes").is_not_null().mean().is_between(0.2, 0.5)).item()

    profiles = pl.read_parquet(generated.profiles_path)
    assert profiles.columns == [
        "profile_id",
        "loyalty_tier",
        "signup_date",
        "region",
        "age_band",
        "email_opt_in",
    ]
    assert profiles.height == generated.profiles
    truth = pl.read_parquet(generated.ground_truth_path)
    assert set(truth["persona"].unique()) == set(PERSONAS)
    assert truth["profile_id"].sort().equals(profiles["profile_id"].sort())


def test_generated_events_pass_validation(generated: GenerateSummary) -> None:
    for batch in read_batches(generated.events_path, batch_rows=20_000):
        result = validate(batch, generated.ingest_now)
        assert result.rejected.is_empty()
        assert result.accepted.equals(batch)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = generate(
        tmp_path / "a", profiles=500, seed=3, start=date(2024, 3, 1), end=date(2024, 9, 1)
    )
    second = generate(
        tmp_path / "b", profiles=500, seed=3, start=date(2024, 3, 1), end=date(2024, 9, 1)
    )
    other = generate(
        tmp_path / "c", profiles=500, seed=4, start=date(2024, 3, 1), end=date(2024, 9, 1)
    )
    for name in ("events_path", "profiles_path", "ground_truth_path"):
        assert _digest(getattr(first, name)) == _digest(getattr(second, name))
    assert _digest(first.events_path) != _digest(other.events_path)


def _behaviour(generated: GenerateSummary) -> pl.DataFrame:
    """Per-profile mix of event types, channels and categories, plus RFM."""
    events = pl.read_parquet(generated.events_path)
    frames = []
    for column in ("event_type", "channel", "product_category"):
        mix = (
            events.filter(pl.col(column).is_not_null())
            .group_by("profile_id", column)
            .len()
            .with_columns(pl.col("len") / pl.col("len").sum().over("profile_id"))
            .pivot(on=column, index="profile_id", values="len")
            .fill_null(0.0)
        )
        frames.append(mix.rename({c: f"{column}:{c}" for c in mix.columns if c != "profile_id"}))
    end = pl.lit(generated.end)
    rfm = events.group_by("profile_id").agg(
        (end - pl.col("timestamp").max()).dt.total_days().log1p().alias("recency"),
        pl.len().log1p().alias("frequency"),
        pl.col("value").sum().log1p().alias("monetary"),
        (pl.col("timestamp") > end - pl.duration(days=30)).sum().log1p().alias("last_30_days"),
        (pl.col("timestamp") > end - pl.duration(days=90)).sum().log1p().alias("last_90_days"),
    )
    table = pl.read_parquet(generated.ground_truth_path)
    for frame in [*frames, rfm]:
        table = table.join(frame, on="profile_id", how="left")
    return table.fill_null(0.0)


def test_personas_are_recoverable_by_clustering(generated: GenerateSummary) -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    metrics = pytest.importorskip("sklearn.metrics")
    table = _behaviour(generated)
    mix = table.select(pl.col("^.*:.*$")).to_numpy()
    labels = cluster.KMeans(len(PERSONAS), n_init=10, random_state=0).fit_predict(mix)
    assert metrics.adjusted_rand_score(table["persona"].to_numpy(), labels) >= 0.7


@pytest.mark.parametrize("target", ["future_purchase", "churned"])
def test_outcomes_are_predictable_from_behaviour(generated: GenerateSummary, target: str) -> None:
    linear = pytest.importorskip("sklearn.linear_model")
    metrics = pytest.importorskip("sklearn.metrics")
    table = _behaviour(generated)
    features = table.select(
        pl.exclude("profile_id", "persona", "future_purchase", "churned", "^.*_probability$")
    )
    x = features.to_numpy()
    y = table[target].to_numpy()
    half = len(y) // 2
    model = linear.LogisticRegression(max_iter=2_000).fit(x[:half], y[:half])
    auc = metrics.roc_auc_score(y[half:], model.predict_proba(x[half:])[:, 1])
    assert auc > 0.65
    assert 0.02 < y.mean() < 0.9
    truth_probability = (
        "future_purchase_probability" if target == "future_purchase" else "churn_probability"
    )
    assert table[truth_probability].is_between(0.0, 1.0).all()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"profiles": 0}, "profiles"),
        ({"end": date(2023, 1, 1)}, "end"),
        ({"outcome_window_days": 0}, "outcome_window_days"),
    ],
)
def test_bad_arguments_name_the_field(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        generate(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert error.value.field == field
