"""Simulator figures (issue 13): Foresight vs BG/NBD vs the truth, on logs whose truth is known.

For each setting of `foresight.tools.simulate` (*pure* BG/NBD, *rich* with
seasonality, drift, browsing, attributes and noise):

1. simulate ``FORESIGHT_BENCH_SIM_CUSTOMERS`` customers (default 30,000) over
   two years up to the cutoff, with each one's true probability of buying in
   the next 90-day goal window and the outcome drawn from it;
2. Foresight, in process, through the real domain code: ImportDataset
   (validation included), ImportProfiles (*rich*), CreateInstance (a
   conversion goal on purchases with the same window), TrainModel; then the
   scorer's batch scoring function scores every profile as of the cutoff;
3. BG/NBD fitted with pymc-marketing's BetaGeoModel (MAP) on the same
   purchase history (continuous time, in weeks), its probability of at least
   one purchase in the window (1 - `expected_probability_no_purchase`);
4. the recency baseline (fewer days since the last purchase ranks higher)
   and the oracle (the true probabilities);

all compared on the same realized outcomes: AUC and Brier score.
`pip install -e '.[bench]'` brings pymc-marketing (`make bench` does).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from foresight import instance as inst
from foresight.events.store import EventStore
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.profiles import profile_attributes
from foresight.tools.simulate import PURCHASE, Setting, SimulationSummary, simulate
from foresight.tools.simulate_process import Heterogeneity
from services.scorer.batch import score_shard
from services.scorer.models import load_bundle
from services.trainer.ingest import Ingestor
from services.trainer.instances import Instances
from services.trainer.training import ModelTrainer

CUSTOMERS = int(os.environ.get("FORESIGHT_BENCH_SIM_CUSTOMERS", "30000"))
WINDOW_DAYS = 90
SEEDS = {Setting.PURE: 1301, Setting.RICH: 1302}
DATASET = "sim"
ATTRIBUTES = ["loyalty_tier", "email_opt_in", "region", "age_band", "signup_date"]
_DAY_US = 86_400e6


@dataclass(frozen=True)
class Predictions:
    """Every customer's outcome and each method's probability, aligned by profile."""

    outcome: np.ndarray
    truth: np.ndarray
    foresight: np.ndarray
    bgnbd: np.ndarray
    bayes: np.ndarray  # BG/NBD with the generating parameters (the bound in *pure* only)
    recency: np.ndarray  # minus the days since the last purchase (a ranking, not a probability)


def foresight_scores(summary: SimulationSummary, var: Path, setting: Setting) -> pl.DataFrame:
    """Import, train and batch-score in process; profile_id and probability at the cutoff."""
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    db = Database(f"sqlite:///{var / 'foresight.db'}")
    db.migrate()
    store = EventStore(var / "events", shards=8)
    artifacts = ArtifactStore(var / "artifacts")
    ingestor = Ingestor(db, store, summary.events_path.parent)
    ingested = ingestor.import_dataset(DATASET, summary.events_path.name)
    if ingested.rejected:
        raise RuntimeError(f"simulated events rejected: {ingested.reject_reasons}")
    attributes = ATTRIBUTES if summary.profiles_path is not None else []
    if summary.profiles_path is not None:
        ingestor.import_profiles(summary.profiles_path.name)
    config = inst.from_dict(
        {
            "name": "will-buy",
            "type": "CONVERSION",
            "goal": {"conditions": f'event_type = "{PURCHASE}"', "window_days": WINDOW_DAYS},
            "profile_attributes": attributes,
        }
    )
    Instances(db).create(config, DATASET)
    trainer = ModelTrainer(db, store, artifacts, workers=os.cpu_count() or 1)
    try:
        info = trainer.train(config.name)
    finally:
        trainer.close()
    assert info.artifact_path is not None
    model = load_bundle(artifacts.path(info.artifact_path), config.name, info.version)
    events = store.scan(DATASET, catalog.catalogued_parts(db, DATASET)).collect()
    profiles = profile_attributes(db, attributes) if attributes else None
    scored = score_shard(events, profiles, summary.cutoff, model, k=1)
    db.dispose()
    return pl.DataFrame(
        {"profile_id": scored.profile_ids.to_pylist(), "foresight": scored.probability}
    ).with_columns(pl.col("foresight").cast(pl.Float64), pl.lit(info.auc).alias("validation_auc"))


def purchase_summary(events: pl.DataFrame, summary: SimulationSummary) -> pl.DataFrame:
    """BG/NBD's inputs per customer in weeks: repeat purchases x, recency t_x, age T."""
    cutoff_us = summary.cutoff.timestamp() * 1e6
    week = 7 * _DAY_US
    return (
        events.filter(pl.col("event_type") == PURCHASE)
        .group_by("profile_id")
        .agg(
            (pl.len() - 1).alias("frequency"),
            pl.col("timestamp").min().dt.epoch("us").alias("first_us"),
            pl.col("timestamp").max().dt.epoch("us").alias("last_us"),
        )
        .with_columns(
            ((pl.col("last_us") - pl.col("first_us")) / week).alias("recency"),
            ((cutoff_us - pl.col("first_us")) / week).alias("T"),
            (-(cutoff_us - pl.col("last_us")) / _DAY_US).alias("recency_score"),
        )
        .sort("profile_id")
    )


def bgnbd_probability(rfm: pl.DataFrame, outcome_days: int) -> tuple[np.ndarray, dict[str, float]]:
    """P(at least one purchase in the next `outcome_days`) from a BG/NBD fit (MAP)."""
    from pymc_marketing.clv import BetaGeoModel  # the bench extra: not needed by `make test`

    data = rfm.select(
        pl.int_range(pl.len()).alias("customer_id"), "frequency", "recency", "T"
    ).to_pandas()
    model = BetaGeoModel(data=data)
    model.fit(method="map", progressbar=False)
    posterior = model.fit_result  # the MAP point as a one-draw posterior
    params = {
        name: float(posterior[name].mean())
        for name in ("r", "alpha", "a", "b")
        if name in posterior
    }
    none = model.expected_probability_no_purchase(t=outcome_days / 7.0, data=data)  # type: ignore[arg-type,unused-ignore]
    return 1.0 - np.asarray(none).reshape(-1), params


def posterior_with_true_parameters(rfm: pl.DataFrame, outcome_days: int) -> np.ndarray:
    """BG/NBD's prediction with the generating parameters: in *pure*, the best any model can
    do from the purchase history (the oracle also knows who is alive, which no data shows).

    P(alive | x, t_x, T) x (1 - ((alpha+T)/(alpha+T+t))^(r+x)) (Fader, Hardie & Lee 2005).
    """
    mix = Heterogeneity()
    r, alpha, a, b = mix.r, mix.alpha / 7.0, mix.a, mix.b  # rates per week
    x = rfm["frequency"].to_numpy().astype(float)
    t_x, t_cap = rfm["recency"].to_numpy(), rfm["T"].to_numpy()
    odds_dead = np.where(
        x > 0, a / np.maximum(b + x - 1, 1e-12) * ((alpha + t_cap) / (alpha + t_x)) ** (r + x), 0.0
    )
    alive = 1.0 / (1.0 + odds_dead)
    t = outcome_days / 7.0
    result: np.ndarray = alive * (1.0 - ((alpha + t_cap) / (alpha + t_cap + t)) ** (r + x))
    return result


def predictions(
    summary: SimulationSummary, var: Path, setting: Setting
) -> tuple[Predictions, dict[str, float]]:
    """Every method's probabilities for every simulated customer, and the BG/NBD parameters."""
    events = pl.read_parquet(summary.events_path)
    rfm = purchase_summary(events, summary)
    bgnbd, params = bgnbd_probability(rfm, summary.outcome_days)
    truth = pl.read_parquet(summary.ground_truth_path)
    scores = foresight_scores(summary, var, setting)
    joined = (
        truth.join(
            rfm.with_columns(
                pl.Series("bgnbd", bgnbd),
                pl.Series("bayes", posterior_with_true_parameters(rfm, summary.outcome_days)),
            ),
            on="profile_id",
            how="inner",
        )
        .join(scores, on="profile_id", how="inner")
        .sort("profile_id")
    )
    if joined.height != truth.height:
        raise RuntimeError(f"{truth.height - joined.height} customers were not scored by all")
    params["foresight_validation_auc"] = float(joined["validation_auc"][0] or 0.0)
    return (
        Predictions(
            outcome=joined["purchased"].to_numpy().astype(np.int8),
            truth=joined["true_probability"].to_numpy(),
            foresight=joined["foresight"].to_numpy(),
            bgnbd=joined["bgnbd"].to_numpy(),
            bayes=joined["bayes"].to_numpy(),
            recency=joined["recency_score"].to_numpy(),
        ),
        params,
    )


def figures(p: Predictions) -> dict[str, float]:
    """AUC of every method and Brier score of the probabilities, on the same outcomes."""
    probabilities = {"truth": p.truth, "foresight": p.foresight, "bgnbd": p.bgnbd, "bayes": p.bayes}
    out = {f"auc_{name}": float(roc_auc_score(p.outcome, v)) for name, v in probabilities.items()}
    out["auc_recency"] = float(roc_auc_score(p.outcome, p.recency))
    for name, v in probabilities.items():
        out[f"brier_{name}"] = float(np.mean((v - p.outcome) ** 2))
    return out


def run(results: dict[str, Any], data: Path) -> None:
    """Both settings, side by side: the figures issue 13 names."""
    root = data / "simulator"
    for setting in Setting:
        summary = simulate(
            root / setting.value / "imports",
            setting,
            customers=CUSTOMERS,
            seed=SEEDS[setting],
            window_days=WINDOW_DAYS,
        )
        preds, params = predictions(summary, root / setting.value / "var", setting)
        # Kept for diagnosis (calibration by band, who each method misses).
        pl.DataFrame(vars(preds)).write_parquet(root / setting.value / "predictions.parquet")
        got = {k: round(v, 4) for k, v in figures(preds).items()}
        prefix = "auc_pure_" if setting is Setting.PURE else "auc_"
        brier = "brier_pure_" if setting is Setting.PURE else "brier_"
        for method, label in (("truth", "oracle"), ("foresight", "foresight"), ("bgnbd", "bgnbd")):
            results[f"{prefix}{label}"] = got[f"auc_{method}"]
            results[f"{brier}{label}"] = got[f"brier_{method}"]
        results[f"{prefix}recency"] = got["auc_recency"]
        if setting is Setting.PURE:
            results["auc_pure_bgnbd_true_params"] = got["auc_bayes"]
            results["brier_pure_bgnbd_true_params"] = got["brier_bayes"]
        results[f"sim_{setting.value}_bgnbd_params"] = {k: round(v, 4) for k, v in params.items()}
        results[f"sim_{setting.value}_events"] = summary.events
        results[f"sim_{setting.value}_positive_rate"] = round(summary.positive_rate, 4)
        results[f"sim_{setting.value}_mean_true_probability"] = round(
            summary.mean_true_probability, 4
        )
    results["sim_customers"] = CUSTOMERS
    results["sim_window_days"] = WINDOW_DAYS
    results["auc_pure_foresight_minus_bgnbd"] = round(
        results["auc_pure_foresight"] - results["auc_pure_bgnbd"], 4
    )
    results["auc_oracle_minus_foresight"] = round(
        results["auc_oracle"] - results["auc_foresight"], 4
    )
    results["auc_foresight_minus_bgnbd"] = round(results["auc_foresight"] - results["auc_bgnbd"], 4)
