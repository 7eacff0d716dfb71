"""The purchase process behind `foresight.tools.simulate`, day by day, with its exact truth.

Each customer ``i`` has latent traits drawn once (`draw_latents`):

- ``lam``: purchase rate per day while alive, Gamma(shape r, rate alpha);
- ``p``: probability of dropping out right after each repeat purchase, Beta(a, b);
- ``birth``: the moment of the first purchase (days since the start);
- ``drift``: the yearly change of log purchase rate with age (0 in *pure*).

On day ``d`` an alive customer buys at the intensity

    mu_i(d) = lam_i * season(d) * exp(drift_i * (d - birth_i) / 365) * exposure_i(d)

(``season`` is 1 in *pure*; ``exposure`` is the share of the day after the
birth moment, 1 on later days, 0 before). Purchases within a day are the
arrivals of a Poisson process at that intensity, and after each one the
customer drops out with probability ``p``: the day's purchases are
min(K, G) with K ~ Poisson(mu) and G ~ Geometric(p) (the purchase at which
the customer drops out), and the customer is still alive after the day iff
G > K. This is exact for an intensity that is constant within a day, so in
*pure* it is the continuous-time BG/NBD process (Fader, Hardie & Lee 2005).

The truth: a customer alive at the cutoff buys at least once in an outcome
window of days ``D`` with probability 1 - exp(-sum_{d in D} mu_i(d)), since
dropout only happens after a purchase; a customer who dropped out never buys
again. So, given everything the simulator knows,

    P_i = alive_i(cutoff) * (1 - exp(-sum_{d in D} mu_i(d)))

which in *pure* is alive * (1 - exp(-lam * len(D))).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Heterogeneity:
    """The BG/NBD population: rates Gamma(r, alpha) per day, dropout Beta(a, b)."""

    r: float = 0.75
    alpha: float = 40.0
    a: float = 0.8
    b: float = 4.0


@dataclass(frozen=True, slots=True)
class Latents:
    """Every customer's latent traits (one entry per customer)."""

    lam: FloatArray
    p: FloatArray
    birth: FloatArray  # days since the start, fractional
    drift: FloatArray  # yearly change of the log purchase rate with age

    def take(self, index: IntArray) -> Latents:
        """The latents of the customers at `index` (repeats allowed: Monte Carlo copies)."""
        return Latents(self.lam[index], self.p[index], self.birth[index], self.drift[index])


def draw_latents(
    rng: np.random.Generator,
    customers: int,
    history_days: int,
    mix: Heterogeneity,
    drift_mean: float = 0.0,
    drift_sd: float = 0.0,
) -> Latents:
    """Rates, dropout probabilities, birth moments (uniform over the history) and drifts."""
    lam = rng.gamma(mix.r, 1.0 / mix.alpha, size=customers)
    p = rng.beta(mix.a, mix.b, size=customers)
    birth = rng.uniform(0.0, history_days, size=customers)
    drift = (
        rng.normal(drift_mean, drift_sd, size=customers)
        if drift_sd > 0
        else np.full(customers, drift_mean)
    )
    return Latents(lam, p, birth, drift)


def intensity(latents: Latents, season: FloatArray, day: int) -> FloatArray:
    """mu_i(day): expected purchases of each customer on `day` if alive all day."""
    age = day - latents.birth
    exposure = np.clip(1.0 + age, 0.0, 1.0)  # the share of the day after the birth moment
    drift = np.exp(latents.drift * np.maximum(age, 0.0) / 365.0)
    mu: FloatArray = latents.lam * season[day] * drift * exposure
    return mu


def purchase_day(
    rng: np.random.Generator, mu: FloatArray, p: FloatArray, alive: BoolArray
) -> tuple[IntArray, BoolArray]:
    """One day of the process: purchases per customer, and who dropped out after one."""
    count = np.zeros(len(mu), dtype=np.int64)
    died = np.zeros(len(mu), dtype=bool)
    idx = np.flatnonzero(alive & (mu > 0))
    if idx.size == 0:
        return count, died
    k = rng.poisson(mu[idx])
    buyers = k > 0
    idx, k = idx[buyers], k[buyers]
    g = rng.geometric(p[idx])  # the purchase after which the customer drops out
    count[idx] = np.minimum(k, g)
    died[idx] = g <= k
    return count, died


def window_mass(latents: Latents, season: FloatArray, days: range) -> FloatArray:
    """sum_{d in days} mu_i(d): expected purchases in the window for a customer alive throughout."""
    total = np.zeros(len(latents.lam))
    for day in days:
        total += intensity(latents, season, day)
    return total


def true_probability(
    latents: Latents, season: FloatArray, alive: BoolArray, days: range
) -> FloatArray:
    """P(at least one purchase on `days` | latents, alive at the window's start)."""
    return np.where(alive, -np.expm1(-window_mass(latents, season, days)), 0.0)


def realize_window(
    rng: np.random.Generator,
    latents: Latents,
    season: FloatArray,
    alive: BoolArray,
    days: range,
) -> BoolArray:
    """Draw whether each customer buys at least once on `days` (the realized outcome)."""
    alive = alive.copy()
    bought = np.zeros(len(alive), dtype=bool)
    for day in days:
        count, died = purchase_day(rng, intensity(latents, season, day), latents.p, alive)
        bought |= count > 0
        alive &= ~died
    return bought


@dataclass(frozen=True, slots=True)
class History:
    """What happened before the cutoff: every purchase, and who is alive at the cutoff."""

    customer: IntArray  # one entry per purchase, the first (birth) purchase included
    time: FloatArray  # days since the start, fractional
    alive: BoolArray  # per customer, at the cutoff
    death: FloatArray  # per customer: the day of dropout (inf while alive)


def run_history(
    rng: np.random.Generator, latents: Latents, season: FloatArray, history_days: int
) -> History:
    """Simulate every day before the cutoff: birth purchases, repeats, dropouts."""
    n = len(latents.lam)
    alive = np.ones(n, dtype=bool)
    death = np.full(n, np.inf)
    customers: list[IntArray] = [np.arange(n, dtype=np.int64)]
    times: list[FloatArray] = [latents.birth.copy()]
    for day in range(history_days):
        count, died = purchase_day(rng, intensity(latents, season, day), latents.p, alive)
        buyers = np.flatnonzero(count)
        if buyers.size:
            who = np.repeat(buyers, count[buyers])
            # Arrivals are uniform over the part of the day the customer could buy in.
            start = np.maximum(latents.birth[who] - day, 0.0)
            customers.append(who)
            times.append(day + start + (1.0 - start) * rng.random(who.size))
        death[died] = day + 1.0
        alive &= ~died
    return History(np.concatenate(customers), np.concatenate(times), alive, death)
