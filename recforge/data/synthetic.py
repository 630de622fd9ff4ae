"""A seeded synthetic interaction log with the structure real recommendation data has.

The generator exists so that the whole pipeline can run, be tested and be demonstrated without downloading
anything. It is built to be *learnable* in the same way real logs are:

- Items belong to one main genre (plus up to two secondary ones) out of :data:`GENRE_NAMES`; each genre has a
  latent taste vector, and an item's latent vector is its genre's vector plus noise.
- Each user has a sparse mix of favourite genres (a Dirichlet draw, nudged by age), giving a latent vector.
- The chance that a user picks an item mixes the item's Zipf-like popularity with the user-item affinity
  (dot product of the latent vectors). Popularity alone therefore explains part of the log, and a
  collaborative model that learns the latent structure explains clearly more.
- User activity is lognormal (a few heavy users, many light ones, every user at least 5 events); each user is
  active during their own period inside the ``days`` window.
- Ratings are integers 1–5 driven by affinity, item and user biases and noise.
- Like real logs it is a little dirty: about 0.5% exact duplicate rows, about 1% repeated user–item pairs at a
  later time with a different rating, and a few missing attribute values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recforge.data.contract import CATEGORY_SEPARATOR, GENRES, ITEM, RATING, TIMESTAMP, USER, Dataset

#: The fixed genre vocabulary of the synthetic catalogue.
GENRE_NAMES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
)
# Relative catalogue share of each genre as an item's main genre (Drama and Comedy dominate, as in film data).
_GENRE_WEIGHTS = np.array([1.2, 0.8, 0.5, 1.6, 0.8, 0.4, 2.0, 0.6, 0.6, 1.0, 0.7, 1.0])
# Genres that younger / older users lean towards; the nudge ties demographics to taste so user features matter.
_YOUNG_GENRES = ("Action", "Animation", "Sci-Fi", "Horror", "Fantasy")
_OLD_GENRES = ("Drama", "Documentary", "Romance", "Crime")

_OCCUPATIONS = (
    "student",
    "engineer",
    "educator",
    "administrator",
    "programmer",
    "writer",
    "healthcare",
    "artist",
    "scientist",
    "salesman",
    "other",
    "retired",
)
_TITLE_ADJECTIVES = (
    "Silent", "Broken", "Golden", "Hidden", "Last", "Crimson", "Endless", "Lonely", "Electric", "Distant",
    "Frozen", "Secret", "Wild", "Burning", "Quiet", "Midnight", "Lost", "Final", "Bright", "Savage",
)  # fmt: skip
_TITLE_NOUNS = (
    "River", "Empire", "Garden", "Horizon", "Witness", "Harbor", "Machine", "Promise", "Frontier", "Storm",
    "Mirror", "Kingdom", "Signal", "Summer", "Voyage", "Shadow", "Letter", "Engine", "Island", "Heart",
)  # fmt: skip

_LATENT_DIM = 16
# Weights of the two parts of a user's choice logit: log-popularity and standardised affinity. Chosen so that
# the top 10% of items hold roughly half the events while item-item collaborative filtering still beats
# popularity by a wide margin (checked in tests/test_sources.py).
_POPULARITY_WEIGHT = 1.5
_AFFINITY_WEIGHT = 2.4
_EXACT_DUPLICATE_SHARE = 0.005
_REPEAT_SHARE = 0.01
_MIN_EVENTS_PER_USER = 5
# A user never interacts with more than this share of the catalogue (distinct items), as in real logs.
_MAX_CATALOGUE_SHARE = 0.5
# Users × items values of dense sampling keys held at once (8M float64 = 64 MB).
_BLOCK_VALUES = 8_000_000


def generate_synthetic(
    n_users: int = 1500,
    n_items: int = 800,
    n_events: int = 60_000,
    seed: int = 42,
    start: str = "2024-01-01",
    days: int = 180,
) -> Dataset:
    """Generate a synthetic explicit-feedback dataset (name ``"synthetic"``, ratings 1–5).

    Args:
        n_users: number of users; every user gets at least 5 events.
        n_items: number of catalogue items (ids ``"i1"`` … ``"i<n_items>"``; users are ``"u1"`` …).
        n_events: total number of interaction rows, duplicates and repeats included.
        seed: seed of the numpy generator; the same arguments always give identical frames.
        start: first day of the time window (UTC).
        days: length of the time window in days.

    Returns:
        A :class:`Dataset` with interactions (user_id, item_id, rating, timestamp), users (user_id, age,
        gender, occupation) and items (item_id, title, genres, release_year).

    Raises:
        ValueError: when the sizes cannot be satisfied (e.g. fewer than 5 events per user on average).
    """
    n_dup = round(_EXACT_DUPLICATE_SHARE * n_events)
    n_rep = round(_REPEAT_SHARE * n_events)
    n_base = n_events - n_dup - n_rep
    max_per_user = max(_MIN_EVENTS_PER_USER, int(_MAX_CATALOGUE_SHARE * n_items))
    if n_users < 1 or n_items < _MIN_EVENTS_PER_USER or days < 1:
        raise ValueError(
            f"need n_users >= 1, n_items >= {_MIN_EVENTS_PER_USER} and days >= 1; got {n_users}, {n_items}, {days}"
        )
    if not _MIN_EVENTS_PER_USER * n_users <= n_base <= max_per_user * n_users:
        raise ValueError(
            f"n_events={n_events} does not fit n_users={n_users} and n_items={n_items}: each user needs "
            f"{_MIN_EVENTS_PER_USER}..{max_per_user} distinct events; choose n_events between about "
            f"{_MIN_EVENTS_PER_USER * n_users} and {max_per_user * n_users}"
        )
    rng = np.random.default_rng(seed)
    n_genres = len(GENRE_NAMES)
    genre_vectors = rng.normal(size=(n_genres, _LATENT_DIM))

    items, item_vectors, main_genre = _make_items(rng, n_items, genre_vectors)
    users, user_vectors = _make_users(rng, n_users, genre_vectors)

    # Zipf-like popularity over a random ordering of the catalogue; the +5 flattens the extreme head a bit.
    popularity_rank = rng.permutation(n_items)
    log_popularity = -1.0 * np.log(popularity_rank + 5.0)
    # The affinity's mean and standard deviation over all user × item pairs, from the latent vectors' sums and
    # Gram matrices: the dense users × items matrix never exists (200,000 × 20,000 would be 30 GB).
    scale = 1.0 / np.sqrt(_LATENT_DIM)
    n_pairs = n_users * n_items
    affinity_mean = float(user_vectors.sum(axis=0) @ item_vectors.sum(axis=0)) * scale / n_pairs
    affinity_square = float(np.sum((user_vectors.T @ user_vectors) * (item_vectors.T @ item_vectors))) * scale**2
    affinity_std = float(np.sqrt(max(affinity_square / n_pairs - affinity_mean**2, 1e-300)))

    counts = _activity_counts(rng, n_users, n_base, max_per_user)
    # Weighted sampling without replacement (Gumbel top-k): each user's counts[u] items with the largest
    # logit + Gumbel noise, in descending order of that key. Users are handled in blocks that bound memory;
    # the noise is drawn block after block from the same stream, so the result does not depend on the blocks.
    user_idx = np.repeat(np.arange(n_users), counts)
    item_parts: list[np.ndarray] = []
    chosen_parts: list[np.ndarray] = []
    block = max(1, _BLOCK_VALUES // n_items)
    for first in range(0, n_users, block):
        last = min(first + block, n_users)
        affinity_z = (user_vectors[first:last] @ item_vectors.T * scale - affinity_mean) / affinity_std
        keys = _POPULARITY_WEIGHT * log_popularity[None, :] + _AFFINITY_WEIGHT * affinity_z
        keys += rng.gumbel(size=keys.shape)
        wanted = counts[first:last]
        width = int(wanted.max())
        top = np.argpartition(-keys, width - 1, axis=1)[:, :width] if width < n_items else np.argsort(-keys, axis=1)
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable"), 1)
        take = np.arange(top.shape[1])[None, :] < wanted[:, None]
        item_parts.append(top[take])
        chosen_parts.append(np.take_along_axis(affinity_z, top, axis=1)[take])
    item_idx = np.concatenate(item_parts)

    # Ratings: affinity dominates, plus item quality (slightly higher for popular items), user leniency, noise.
    item_bias = rng.normal(0.0, 0.35, n_items) + 0.15 * (log_popularity - log_popularity.mean())
    user_bias = rng.normal(0.0, 0.4, n_users)
    # Affinity is re-standardised over the chosen pairs: chosen items are high-affinity by construction, and
    # the rating scale should centre on the typical chosen item (mean about 3.5, as in MovieLens).
    chosen = np.concatenate(chosen_parts)
    raw = (
        3.55
        + 0.8 * (chosen - chosen.mean()) / chosen.std()
        + item_bias[item_idx]
        + user_bias[user_idx]
        + rng.normal(0.0, 0.7, n_base)
    )
    ratings = np.clip(np.rint(raw), 1, 5)

    # Each user is active during their own period inside the window.
    window = days * 86_400.0
    active = window * np.clip(rng.beta(1.3, 2.2, n_users), 3.0 / days, 1.0)
    active_start = rng.uniform(0.0, 1.0, n_users) * (window - active)
    seconds = active_start[user_idx] + rng.uniform(0.0, 1.0, n_base) * active[user_idx]

    # Repeats: the same user-item pair later on, with a rating one step up or down (reflected at the bounds).
    rep = rng.choice(n_base, size=n_rep, replace=False)
    rep_seconds = seconds[rep] + (window - seconds[rep]) * rng.uniform(0.05, 1.0, n_rep)
    step = rng.choice([-1.0, 1.0], size=n_rep)
    rep_ratings = ratings[rep] + step
    rep_ratings = np.where((rep_ratings < 1) | (rep_ratings > 5), ratings[rep] - step, rep_ratings)

    user_idx = np.concatenate([user_idx, user_idx[rep]])
    item_idx = np.concatenate([item_idx, item_idx[rep]])
    ratings = np.concatenate([ratings, rep_ratings])
    seconds = np.concatenate([seconds, rep_seconds])
    # Exact duplicates: whole rows logged twice.
    dup = rng.choice(len(user_idx), size=n_dup, replace=False)
    user_idx = np.concatenate([user_idx, user_idx[dup]])
    item_idx = np.concatenate([item_idx, item_idx[dup]])
    ratings = np.concatenate([ratings, ratings[dup]])
    seconds = np.floor(np.concatenate([seconds, seconds[dup]])).astype(np.int64)

    time_order = np.argsort(seconds, kind="stable")
    origin = pd.Timestamp(start)
    origin = origin.tz_localize("UTC") if origin.tzinfo is None else origin.tz_convert("UTC")
    interactions = pd.DataFrame(
        {
            USER: users[USER].to_numpy()[user_idx[time_order]],
            ITEM: items[ITEM].to_numpy()[item_idx[time_order]],
            RATING: ratings[time_order].astype(np.float64),
            TIMESTAMP: origin + pd.to_timedelta(seconds[time_order], unit="s"),
        }
    )
    interactions[USER] = interactions[USER].astype("str")
    interactions[ITEM] = interactions[ITEM].astype("str")
    return Dataset(
        name="synthetic",
        interactions=interactions,
        users=users,
        items=items,
        source=f"synthetic(n_users={n_users}, n_items={n_items}, n_events={n_events}, seed={seed})",
        rating_range=(1.0, 5.0),
        metadata={
            "seed": str(seed),
            "start": str(origin.date()),
            "days": str(days),
            "main_genre_share": ",".join(f"{g}={(main_genre == i).mean():.3f}" for i, g in enumerate(GENRE_NAMES)),
        },
    )


def _activity_counts(rng: np.random.Generator, n_users: int, total: int, cap: int) -> np.ndarray:
    """Distinct-event counts per user: lognormal activity, each in [5, cap], summing exactly to ``total``."""
    weights = rng.lognormal(0.0, 1.0, n_users)
    counts = _MIN_EVENTS_PER_USER + rng.multinomial(total - _MIN_EVENTS_PER_USER * n_users, weights / weights.sum())
    # Heavy users beyond the cap hand their excess to the users below it, in proportion to their activity.
    while (excess := int(np.maximum(counts - cap, 0).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = counts < cap
        share = np.where(room, weights, 0.0)
        counts = counts + rng.multinomial(excess, share / share.sum())
    return counts


def _make_items(
    rng: np.random.Generator, n_items: int, genre_vectors: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Items table, their latent vectors, and each item's main genre index."""
    n_genres = len(GENRE_NAMES)
    main = rng.choice(n_genres, size=n_items, p=_GENRE_WEIGHTS / _GENRE_WEIGHTS.sum())
    n_extra = rng.choice(3, size=n_items, p=[0.5, 0.35, 0.15])
    labels: list[str | None] = []
    vectors = np.empty((n_items, _LATENT_DIM))
    noise = rng.normal(size=(n_items, _LATENT_DIM))
    for i in range(n_items):
        others = np.delete(np.arange(n_genres), main[i])
        extra = rng.choice(others, size=n_extra[i], replace=False)
        vec = genre_vectors[main[i]].copy()
        if len(extra):
            vec += 0.5 * genre_vectors[extra].mean(axis=0)
        vectors[i] = vec + 0.6 * noise[i]
        genre_idx = sorted([int(main[i]), *(int(e) for e in extra)])
        labels.append(CATEGORY_SEPARATOR.join(GENRE_NAMES[g] for g in genre_idx))
    genres = pd.Series(labels, dtype="str")
    genres[rng.random(n_items) < 0.02] = None

    adjective = rng.choice(len(_TITLE_ADJECTIVES), n_items)
    noun = rng.choice(len(_TITLE_NOUNS), n_items)
    sequel = rng.random(n_items) < 0.08
    titles = [
        f"The {_TITLE_ADJECTIVES[a]} {_TITLE_NOUNS[n]}" + (" II" if s else "")
        for a, n, s in zip(adjective, noun, sequel, strict=True)
    ]
    # Release years lean recent, like a streaming catalogue.
    years = pd.array(np.clip(2024 - np.rint(rng.exponential(12.0, n_items)), 1930, 2024).astype(int), dtype="Int64")
    years[rng.random(n_items) < 0.05] = pd.NA
    items = pd.DataFrame(
        {
            ITEM: pd.Series([f"i{i + 1}" for i in range(n_items)], dtype="str"),
            "title": pd.Series(titles, dtype="str"),
            GENRES: genres,
            "release_year": years,
        }
    )
    return items, vectors, main


def _make_users(rng: np.random.Generator, n_users: int, genre_vectors: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Users table and their latent taste vectors (a sparse genre mix nudged by age, plus noise)."""
    n_genres = len(GENRE_NAMES)
    ages = np.clip(np.rint(rng.gamma(6.0, 5.5, n_users) + 12), 13, 80).astype(int)
    young = np.isin(np.array(GENRE_NAMES), _YOUNG_GENRES)
    old = np.isin(np.array(GENRE_NAMES), _OLD_GENRES)
    alpha = np.full((n_users, n_genres), 0.2)
    alpha[np.ix_(ages < 30, young)] += 0.25
    alpha[np.ix_(ages >= 45, old)] += 0.25
    # Dirichlet with per-user concentration via normalised gammas (numpy's dirichlet takes one alpha vector).
    gammas = rng.gamma(alpha)
    mix = gammas / np.maximum(gammas.sum(axis=1, keepdims=True), 1e-12)
    vectors = mix @ genre_vectors + 0.5 * rng.normal(size=(n_users, _LATENT_DIM))

    gender = pd.Series(np.where(rng.random(n_users) < 0.55, "M", "F"), dtype="str")
    gender[rng.random(n_users) < 0.05] = None
    occupation_idx = rng.choice(len(_OCCUPATIONS) - 2, n_users)  # all but "other"/"retired" by default
    occupation = np.array(_OCCUPATIONS)[occupation_idx]
    occupation = np.where((ages < 23) & (rng.random(n_users) < 0.7), "student", occupation)
    occupation = np.where((ages >= 65) & (rng.random(n_users) < 0.8), "retired", occupation)
    occupation = np.where(rng.random(n_users) < 0.06, "other", occupation)
    occupation_s = pd.Series(occupation, dtype="str")
    occupation_s[rng.random(n_users) < 0.05] = None
    age_s = pd.array(ages, dtype="Int64")
    age_s[rng.random(n_users) < 0.08] = pd.NA
    users = pd.DataFrame(
        {
            USER: pd.Series([f"u{u + 1}" for u in range(n_users)], dtype="str"),
            "age": age_s,
            "gender": gender,
            "occupation": occupation_s,
        }
    )
    return users, vectors
