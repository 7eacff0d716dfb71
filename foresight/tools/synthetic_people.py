"""Profiles, their future outcomes and their sessions, drawn from the synthetic world."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt
import polars as pl

from foresight.tools import synthetic_world as world
from foresight.tools.synthetic_world import FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class People:
    profile_id: pl.Series
    persona: IntArray
    trend: IntArray
    activity: FloatArray
    first_day: IntArray
    last_day: IntArray  # exclusive; == days while still active at the end
    device: IntArray
    browser: IntArray
    email_client: IntArray


@dataclass(frozen=True, slots=True)
class Truth:
    future_purchase: npt.NDArray[np.bool_]
    churned: npt.NDArray[np.bool_]
    purchase_probability: FloatArray
    churn_probability: FloatArray


@dataclass(frozen=True, slots=True)
class Sessions:
    profile: npt.NDArray[np.int32]
    kind: npt.NDArray[np.int32]
    channel: npt.NDArray[np.int32]
    category: npt.NDArray[np.int32]
    start_us: IntArray  # microseconds since the start date


class Categorical:
    """Draws from one of several categorical distributions (rows of a table)
    in O(1) per draw with Walker's alias method.

    Binary search (``searchsorted``) over cumulative tables was the slowest
    step for tens of millions of draws; an alias draw is two uniforms and two
    gathers.
    """

    def __init__(self, table: FloatArray) -> None:
        weights = np.asarray(table, dtype=np.float64)
        if weights.ndim == 1:
            weights = weights[None, :]
        rows, columns = weights.shape
        self.columns = columns
        accept = np.ones((rows, columns))
        alias = np.tile(np.arange(columns, dtype=np.int64), (rows, 1))
        for row in range(rows):
            scaled = weights[row] / weights[row].sum() * columns
            small = [i for i in range(columns) if scaled[i] < 1.0]
            large = [i for i in range(columns) if scaled[i] >= 1.0]
            while small and large:
                low, high = small.pop(), large.pop()
                accept[row, low] = scaled[low]
                alias[row, low] = high
                scaled[high] -= 1.0 - scaled[low]
                (small if scaled[high] < 1.0 else large).append(high)
        self.accept: FloatArray = accept.ravel()
        self.alias: IntArray = alias.ravel()

    def draw(
        self, rng: np.random.Generator, rows: IntArray | int, size: int | None = None
    ) -> IntArray:
        """One draw per element of ``rows`` (or ``size`` draws from row ``rows``)."""
        count = size if size is not None else len(np.atleast_1d(rows))
        uniform = rng.random(count) * self.columns
        column = uniform.astype(np.int64)
        cell = np.asarray(rows, dtype=np.int64) * self.columns + column
        keep = (uniform - column) < self.accept[cell]
        return np.asarray(np.where(keep, column, self.alias[cell]), dtype=np.int64)


def pick(rng: np.random.Generator, table: FloatArray, rows: IntArray) -> IntArray:
    """One categorical draw per element of ``rows`` from ``table[rows]``."""
    return Categorical(table).draw(rng, rows)


def truncated_poisson(mean: FloatArray, top: int) -> FloatArray:
    """Poisson probabilities of 0..top for each mean (the tail folded into ``top``)."""
    k = np.arange(top + 1)
    log_factorial = np.cumsum(np.log(np.maximum(k, 1)))
    pmf = np.exp(k[None, :] * np.log(mean[:, None]) - mean[:, None] - log_factorial[None, :])
    pmf[:, -1] += np.clip(1.0 - pmf.sum(axis=1), 0.0, None)
    return np.asarray(pmf, dtype=np.float64)


def draw_profiles(rng: np.random.Generator, count: int, days: int) -> People:
    persona = pick(rng, world.PERSONA_SHARE[None, :], np.zeros(count, dtype=np.int64))
    trend = pick(rng, world.PERSONA_TREND, persona)
    activity = rng.gamma(shape=3.0, scale=1.0 / 3.0, size=count)
    is_new = rng.random(count) < world.NEW_SHARE
    first_day = np.where(is_new, rng.integers(0, days - 14, size=count), 0).astype(np.int64)
    stops = (rng.random(count) < world.STOP_SHARE) & (trend < world.FADE_FAST)
    stop_day = first_day + 14 + (rng.random(count) * (days - first_day - 14)).astype(np.int64)
    last_day = np.where(stops, np.minimum(stop_day, days - 1), days).astype(np.int64)
    width = max(7, len(str(count)))
    ids = pl.int_range(0, count, eager=True).cast(pl.String).str.zfill(width)
    return People(
        profile_id=("p" + ids).alias("profile_id"),
        persona=persona,
        trend=trend,
        activity=activity,
        first_day=first_day,
        last_day=last_day,
        device=pick(rng, np.array([[0.55, 0.45], [0.55, 0.45]]), np.zeros(count, dtype=np.int64)),
        browser=pick(rng, np.array([[0.6, 0.2, 0.12, 0.08]]), np.zeros(count, dtype=np.int64)),
        email_client=pick(rng, np.array([[0.5, 0.3, 0.2]]), np.zeros(count, dtype=np.int64)),
    )


def daily_density(start: date, days: int) -> FloatArray:
    """Relative activity per day for every (persona, trend) pair: annual
    peaks x weekday pattern x growth or fading."""
    day = np.arange(days, dtype=np.float64)
    first = start.timetuple().tm_yday
    day_of_year = (first - 1 + day) % 365.0
    weekday = (start.weekday() + np.arange(days)) % 7
    rows = []
    for peaks in world.PERSONA_PEAKS:
        annual = np.ones(days)
        for center, width, strength in peaks:
            distance = np.abs(day_of_year - center)
            distance = np.minimum(distance, 365.0 - distance)
            annual += strength * np.exp(-0.5 * (distance / width) ** 2)
        seasonal = annual * world.WEEKDAY_FACTOR[weekday]
        for trend in range(len(world.PERSONA_TREND[0])):
            if trend == world.FLAT:
                shape = np.ones(days)
            elif trend == world.GROWING:
                shape = np.exp(day / 365.0)
            else:
                shape = np.exp(-day / world.FADE_DAYS[trend])
            rows.append(seasonal * shape)
    return np.stack(rows)


def future_outcomes(
    rng: np.random.Generator,
    people: People,
    expected: FloatArray,
    density: FloatArray,
    cdf: FloatArray,
    row: IntArray,
    days: int,
    window: int,
) -> Truth:
    """Outcomes in the window after the data ends, from each profile's
    activity rate on the last day (zero for profiles that stopped)."""
    mass = cdf[row, people.last_day] - cdf[row, people.first_day]
    total = density.sum(axis=1)
    # Sessions per day at the end of the data, carried into the window.
    last_rate = expected * density[row, days - 1] / total[row] / np.maximum(mass, 1e-12)
    active = people.last_day == days
    window_sessions = np.where(active, last_rate * window, 0.0)
    kinds = world.PERSONA_SESSION[people.persona]
    buy_per_session = (
        kinds[:, world.CART] * world.PERSONA_BUY[people.persona] + kinds[:, world.INSTORE]
    )
    churn_probability = np.exp(-window_sessions)
    purchase_probability = 1.0 - np.exp(-window_sessions * buy_per_session)
    future_sessions = rng.poisson(window_sessions)
    # A purchase needs at least one session; each session buys independently.
    buys = rng.binomial(future_sessions, buy_per_session)
    return Truth(
        future_purchase=buys > 0,
        churned=future_sessions == 0,
        purchase_probability=purchase_probability,
        churn_probability=churn_probability,
    )


def draw_sessions(
    rng: np.random.Generator,
    people: People,
    per_profile: IntArray,
    density: FloatArray,
    cdf: FloatArray,
    row: IntArray,
) -> Sessions:
    profile = np.repeat(np.arange(len(per_profile)), per_profile)
    persona = people.persona[profile]
    kind = pick(rng, world.PERSONA_SESSION, persona)
    mobile_web = rng.random(len(profile)) < world.PERSONA_MOBILE_WEB[persona]
    channel = np.select(
        [kind == world.MAIL, kind == world.APP, kind == world.INSTORE, mobile_web],
        [world.EMAIL, world.MOBILE, world.STORE, world.MOBILE],
        default=world.WEB,
    ).astype(np.int64)
    category = pick(rng, world.PERSONA_CATEGORY, persona)

    # Day: drawn from the profile's (persona, trend) density over its active
    # span. Profiles active all year draw straight from the density (alias
    # method); the rest invert the CDF restricted to their span, all rows in
    # one searchsorted thanks to per-row offsets.
    days = density.shape[1]
    session_row = row[profile]
    first = people.first_day[profile]
    last = people.last_day[profile]
    day = Categorical(density).draw(rng, session_row)
    partial = np.flatnonzero((first > 0) | (last < days))
    if len(partial):
        partial_row = session_row[partial]
        low = cdf[partial_row, first[partial]]
        high = cdf[partial_row, last[partial]]
        draws = low + rng.random(len(partial)) * (high - low)
        width = cdf.shape[1]
        flat = (cdf + np.arange(cdf.shape[0])[:, None]).ravel()
        index = np.searchsorted(flat, draws + partial_row, side="right") - 1
        day[partial] = np.clip(index - partial_row * width, first[partial], last[partial] - 1)
    hour = pick(rng, world.CHANNEL_HOURS, channel)
    second = rng.integers(0, 3_600, size=len(profile))
    start_us = (day * 86_400 + hour * 3_600 + second) * 1_000_000
    return Sessions(
        profile=profile.astype(np.int32),
        kind=kind.astype(np.int32),
        channel=channel.astype(np.int32),
        category=category.astype(np.int32),
        start_us=start_us,
    )


def profile_table(rng: np.random.Generator, people: People, start: date) -> pl.DataFrame:
    count = len(people.persona)
    tier = pick(rng, world.PERSONA_LOYALTY, people.persona)
    # Existing customers signed up before the data starts, new ones on
    # their first active day.
    tenure_days = np.where(
        people.first_day > 0, -people.first_day, rng.integers(30, 3_650, size=count)
    )
    signup = np.datetime64(start.isoformat()) - tenure_days.astype("timedelta64[D]")
    return pl.DataFrame(
        {
            "profile_id": people.profile_id,
            "loyalty_tier": pl.Series(world.LOYALTY_TIERS).gather(tier),
            "signup_date": pl.Series(signup).cast(pl.Date),
            "region": pl.Series(world.REGIONS).gather(
                pick(rng, np.full((1, len(world.REGIONS)), 1.0), np.zeros(count, dtype=np.int64))
            ),
            "age_band": pl.Series(world.AGE_BANDS).gather(
                pick(rng, world.PERSONA_AGE, people.persona)
            ),
            "email_opt_in": rng.random(count) < world.PERSONA_EMAIL_OPT_IN[people.persona],
        }
    )
