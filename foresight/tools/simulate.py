"""Purchase logs with a known truth: the yardstick for Customer AI's probabilities.

`simulate` writes, into a folder, events in Foresight's event schema (like
`generate`), profile attributes (``rich`` only) and ``ground_truth.parquet``:
for every customer, the TRUE probability of the goal "at least one purchase
in the outcome window after the cutoff" given everything the simulator knows,
and the outcome it then drew. The outcome window is the one Foresight's goal
uses (`foresight.features.labels.window_end`: ``window_days`` + 1 whole days
from the cutoff, both ends inclusive), so a Foresight instance with the same
``window_days`` predicts exactly this outcome.

Two settings (the process and its exact truth are in `simulate_process`):

*pure* — heterogeneous BG/NBD and nothing else. Rates per day
Gamma(r=0.75, alpha=40) (mean 6.8 purchases a year, most customers far
fewer), dropout after each repeat purchase Beta(a=0.8, b=4) (mean 0.17),
first purchases uniform over the two-year history. Events: purchases only
(value LogNormal per customer, independent of the process, as BG/NBD's
Gamma-Gamma assumption). Truth: P = alive * (1 - exp(-lam * window)).

*rich* — the same process plus what real logs have and BG/NBD ignores.
Signal sizes, chosen to be modest and plausible, not tuned to any result:

- seasonality of the purchase rate: weekly (Mon..Sun x0.90, 0.92, 0.95,
  1.00, 1.08, 1.10, 1.05) and annual (x(1 + 0.25 cos), peak mid-December);
- drifting activity: each customer's log rate changes by drift per year of
  age, drift ~ Normal(-0.1, 0.4) (a 1-sd customer buys x1.5 or x0.67 as
  often a year later);
- browsing that carries signal: sessions at kappa x the purchase intensity
  while alive, kappa ~ LogNormal(ln 3, 0.6) per customer; after dropout
  browsing goes on at 30 % of that, halving every 45 days. A session is one
  page view, Poisson(1) product views and a cart add 10 % of the time;
- profile attributes that carry signal: loyalty tier from
  s = 0.4 z(log lam) + 0.92 noise (gold s > 1, silver s > 0, else none:
  correlation 0.4 with the log rate); email opt-in with probability
  logistic(0.2 - 0.5 z(logit p)) (lower dropout, more opt-ins);
- noise: region and age band (uniform, no signal); email opens for opted-in
  customers at their own Gamma(1, mean 2 a month) rate, unrelated to buying;
  purchase channel and category drawn at random.

Truth: P = alive * (1 - exp(-sum of the day intensities over the window)),
with seasonality and drift in the intensities. Everything is drawn from one
seeded generator, so one seed always gives the same files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import numpy as np
import polars as pl

from foresight.errors import InvalidArgument
from foresight.features.labels import window_end
from foresight.tools import simulate_process as proc
from foresight.tools.simulate_process import BoolArray, FloatArray, Heterogeneity, IntArray, Latents
from foresight.tools.synthetic_events import event_ids

__all__ = ["Setting", "SimulationSummary", "season_of", "simulate"]

PURCHASE = "commerce.purchases"
WEEKLY = (0.90, 0.92, 0.95, 1.00, 1.08, 1.10, 1.05)  # Monday first
ANNUAL_AMPLITUDE = 0.25
ANNUAL_PEAK_DAY = 350  # day of the year
DRIFT_MEAN, DRIFT_SD = -0.1, 0.4
BROWSE_MEDIAN, BROWSE_SD = 3.0, 0.6
AFTER_DROPOUT, AFTER_DROPOUT_HALF_LIFE = 0.30, 45.0
CHANNELS = ("web", "mobile", "store")
CATEGORIES = ("apparel", "home", "beauty", "electronics", "grocery")
REGIONS = ("north", "south", "east", "west", "central")
AGE_BANDS = ("18-29", "30-44", "45-59", "60+")
TIERS = ("none", "silver", "gold")


class Setting(StrEnum):
    """Which world to simulate (see the module docstring)."""

    PURE = "pure"
    RICH = "rich"


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What `simulate` wrote."""

    events_path: Path
    profiles_path: Path | None
    ground_truth_path: Path
    customers: int
    events: int
    cutoff: datetime  # every event is earlier; the outcome window starts here
    window_days: int  # the goal's window (Foresight's meaning)
    outcome_days: int  # whole days the window covers (window_days + 1)
    positive_rate: float  # realized
    mean_true_probability: float
    seconds: float


def season_of(setting: Setting, start: date, days: int) -> FloatArray:
    """The purchase-rate multiplier of each day since `start` (all ones in *pure*)."""
    if setting is Setting.PURE:
        return np.ones(days)
    dates = [start + timedelta(days=d) for d in range(days)]
    weekly = np.array([WEEKLY[d.weekday()] for d in dates])
    year_day = np.array([d.timetuple().tm_yday for d in dates])
    annual = 1.0 + ANNUAL_AMPLITUDE * np.cos(2 * math.pi * (year_day - ANNUAL_PEAK_DAY) / 365.25)
    return weekly * annual


def simulate(
    out_dir: Path,
    setting: Setting = Setting.PURE,
    customers: int = 30_000,
    seed: int = 0,
    start: date = date(2023, 1, 1),
    cutoff: date = date(2025, 1, 1),
    window_days: int = 90,
    mix: Heterogeneity | None = None,
) -> SimulationSummary:
    """Simulate `customers` over [start, cutoff), their truth and outcome after it; write files."""
    if customers <= 0:
        raise InvalidArgument("customers", "must be positive")
    if cutoff <= start:
        raise InvalidArgument("cutoff", "must be after start")
    if window_days < 1:
        raise InvalidArgument("window_days", "must be at least 1")
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    history_days = (cutoff - start).days
    cutoff_dt = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)
    outcome_days = (window_end(cutoff_dt, window_days) - cutoff_dt).days
    window = range(history_days, history_days + outcome_days)
    season = season_of(setting, start, history_days + outcome_days)
    rich = setting is Setting.RICH
    latents = proc.draw_latents(
        rng,
        customers,
        history_days,
        mix or Heterogeneity(),
        DRIFT_MEAN if rich else 0.0,
        DRIFT_SD if rich else 0.0,
    )
    history = proc.run_history(rng, latents, season, history_days)
    truth = proc.true_probability(latents, season, history.alive, window)
    outcome = proc.realize_window(rng, latents, season, history.alive, window)

    ids = pl.Series("profile_id", [f"c{i:06d}" for i in range(customers)])
    events, profiles = _log(rng, setting, latents, season, history, history_days, ids, start, seed)

    truth_frame = pl.DataFrame(
        {
            "profile_id": ids,
            "true_probability": truth,
            "purchased": outcome,
            "alive_at_cutoff": history.alive,
            "lam": latents.lam,
            "p": latents.p,
            "birth_day": latents.birth,
            "drift": latents.drift,
        }
    )
    events_path, profiles_path, truth_path = _write(out_dir, events, profiles, truth_frame)
    return SimulationSummary(
        events_path=events_path,
        profiles_path=profiles_path,
        ground_truth_path=truth_path,
        customers=customers,
        events=events.height,
        cutoff=cutoff_dt,
        window_days=window_days,
        outcome_days=outcome_days,
        positive_rate=float(outcome.mean()),
        mean_true_probability=float(truth.mean()),
        seconds=time.perf_counter() - began,
    )


def _log(
    rng: np.random.Generator,
    setting: Setting,
    latents: Latents,
    season: FloatArray,
    history: proc.History,
    history_days: int,
    ids: pl.Series,
    start: date,
    seed: int,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """What the customers leave in the data: events, and profile attributes (rich only)."""
    parts = [_purchases(rng, history, len(ids))]
    if setting is Setting.PURE:
        return _event_frame(parts, ids, start, seed), None
    # Drawn in this order (browsing, opt-in, email opens, profiles): one seed, one log.
    parts.append(_browsing(rng, latents, season, history, history_days))
    opt_in = _opt_in(rng, latents)
    parts.append(_email_opens(rng, latents, opt_in, history_days))
    profiles = _profiles(rng, latents, ids, opt_in, start)
    return _event_frame(parts, ids, start, seed), profiles


def _write(
    out_dir: Path, events: pl.DataFrame, profiles: pl.DataFrame | None, truth: pl.DataFrame
) -> tuple[Path, Path | None, Path]:
    """The Parquet files: events, profile attributes (rich only), ground truth."""
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path = out_dir / "events.parquet"
    events.write_parquet(events_path, compression="zstd")
    profiles_path = None
    if profiles is not None:
        profiles_path = out_dir / "profiles.parquet"
        profiles.write_parquet(profiles_path, compression="zstd")
    truth_path = out_dir / "ground_truth.parquet"
    truth.write_parquet(truth_path, compression="zstd")
    return events_path, profiles_path, truth_path


# ------------------------------------------------------------------ events

# One part of the log: customer index, time (days since start), event type code, and the
# optional fields (None = null for every row of the part).
_EVENT_TYPES = (
    PURCHASE,
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "message.opened",
)


@dataclass(frozen=True, slots=True)
class _Part:
    customer: IntArray
    time: FloatArray
    event_type: IntArray
    channel: list[str] | None = None
    value: FloatArray | None = None
    quantity: IntArray | None = None
    category: list[str] | None = None
    campaign: list[str] | None = None


def _purchases(rng: np.random.Generator, history: proc.History, customers: int) -> _Part:
    """Purchases with a value (LogNormal around each customer's own typical spend)."""
    typical = rng.lognormal(math.log(40.0), 0.5, size=customers)
    who = history.customer
    value = np.round(typical[who] * rng.lognormal(0.0, 0.3, size=who.size), 2)
    return _Part(
        who,
        history.time,
        np.zeros(who.size, dtype=np.int64),
        channel=[CHANNELS[i] for i in rng.integers(0, len(CHANNELS), who.size)],
        value=value,
        quantity=1 + rng.poisson(0.4, size=who.size),
        category=[CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), who.size)],
    )


def _browsing(
    rng: np.random.Generator,
    latents: Latents,
    season: FloatArray,
    history: proc.History,
    history_days: int,
) -> _Part:
    """Browsing sessions at kappa x the purchase intensity; fading after dropout."""
    n = len(latents.lam)
    kappa = rng.lognormal(math.log(BROWSE_MEDIAN), BROWSE_SD, size=n)
    who_days: list[IntArray] = []
    times: list[FloatArray] = []
    for day in range(history_days):
        since = day - history.death
        fade = np.where(
            since < 0, 1.0, AFTER_DROPOUT * np.exp2(-np.maximum(since, 0) / AFTER_DROPOUT_HALF_LIFE)
        )
        sessions = rng.poisson(kappa * proc.intensity(latents, season, day) * fade)
        who = np.repeat(np.arange(n), sessions)
        start = np.maximum(latents.birth[who] - day, 0.0)
        who_days.append(who)
        times.append(day + start + (1.0 - start) * rng.random(who.size))
    session_customer = np.concatenate(who_days)
    session_time = np.concatenate(times)
    # A page view, Poisson(1) product views, then a cart add 10 % of the time.
    views = rng.poisson(1.0, size=session_customer.size)
    adds = (rng.random(session_customer.size) < 0.1).astype(np.int64)
    length = 1 + views + adds
    session = np.repeat(np.arange(session_customer.size), length)
    step = np.arange(session.size) - np.repeat(np.cumsum(length) - length, length)
    kind = np.where(step == 0, 1, np.where(step <= views[session], 2, 3))
    minutes = step * rng.uniform(0.5, 3.0, size=session.size) / (24 * 60)
    return _Part(
        session_customer[session],
        np.minimum(session_time[session] + minutes, np.floor(session_time[session]) + 0.9999),
        kind.astype(np.int64),
        channel=[CHANNELS[i] for i in rng.integers(0, 2, session.size)],
        category=[CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), session.size)],
    )


def _opt_in(rng: np.random.Generator, latents: Latents) -> BoolArray:
    """Email opt-in: more likely for customers who drop out less."""
    logit_p = np.log(latents.p / (1 - latents.p))
    z = (logit_p - logit_p.mean()) / logit_p.std()
    chance: FloatArray = 1 / (1 + np.exp(-(0.2 - 0.5 * z)))
    opted: BoolArray = rng.random(len(z)) < chance
    return opted


def _email_opens(
    rng: np.random.Generator, latents: Latents, opt_in: BoolArray, history_days: int
) -> _Part:
    """Email opens of opted-in customers from their first purchase on: noise about buying."""
    rate = rng.gamma(1.0, 2.0 / 30.0, size=len(opt_in)) * opt_in
    span = history_days - latents.birth
    count = rng.poisson(rate * span)
    who = np.repeat(np.arange(len(opt_in)), count)
    when = latents.birth[who] + rng.random(who.size) * span[who]
    campaign = rng.integers(0, 24, size=who.size)
    return _Part(
        who,
        when,
        np.full(who.size, 4, dtype=np.int64),
        channel=["email"] * who.size,
        campaign=[f"campaign-{c:02d}" for c in campaign],
    )


def _profiles(
    rng: np.random.Generator, latents: Latents, ids: pl.Series, opt_in: BoolArray, start: date
) -> pl.DataFrame:
    """Profile attributes: a tier that knows a little about the rate, opt-in, and noise."""
    log_lam = np.log(latents.lam)
    z = (log_lam - log_lam.mean()) / log_lam.std()
    s = 0.4 * z + math.sqrt(1 - 0.4**2) * rng.standard_normal(len(z))
    tier = np.where(s > 1.0, 2, np.where(s > 0.0, 1, 0))
    signup = np.datetime64(start.isoformat()) + np.floor(latents.birth).astype("timedelta64[D]")
    return pl.DataFrame(
        {
            "profile_id": ids,
            "loyalty_tier": [TIERS[t] for t in tier],
            "email_opt_in": opt_in,
            "region": [REGIONS[i] for i in rng.integers(0, len(REGIONS), len(z))],
            "age_band": [AGE_BANDS[i] for i in rng.integers(0, len(AGE_BANDS), len(z))],
            "signup_date": pl.Series(signup).cast(pl.Date),
        }
    )


def _event_frame(parts: list[_Part], ids: pl.Series, start: date, seed: int) -> pl.DataFrame:
    """Parts → one frame in the event schema, sorted by time."""
    epoch_us = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp()) * 10**6
    frames = []
    for part in parts:
        rows = part.customer.size
        frames.append(
            pl.DataFrame(
                [
                    ids.gather(part.customer),
                    pl.Series("timestamp", epoch_us + np.floor(part.time * 86_400e6), pl.Int64),
                    pl.Series(_EVENT_TYPES).gather(part.event_type).alias("event_type"),
                    _column("channel", part.channel, rows, pl.String()),
                    _column("value", part.value, rows, pl.Float64()),
                    _column("quantity", part.quantity, rows, pl.Int64()),
                    _column("product_category", part.category, rows, pl.String()),
                    _column("campaign_id", part.campaign, rows, pl.String()),
                ]
            )
        )
    events = pl.concat(frames).sort("timestamp", "profile_id", maintain_order=True)
    return events.with_columns(
        pl.Series("event_id", event_ids(seed, events.height)),
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")),
    ).select("event_id", pl.exclude("event_id"))


def _column(
    name: str, values: list[str] | FloatArray | IntArray | None, rows: int, dtype: pl.DataType
) -> pl.Series:
    """A column of a part; all null when the part has no such field."""
    if values is None:
        return pl.Series(name, [None] * rows, dtype=dtype)
    return pl.Series(name, values, dtype=dtype)
