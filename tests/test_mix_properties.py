"""Property tests of the mixer's choice of copies (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, event, given, settings, strategies as st

from curate.config import MixConfig
from curate.mix import MIN_WEIGHT, choose_repeats

corpora = st.integers(min_value=1, max_value=300).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(min_value=1, max_value=2_000), min_size=n, max_size=n),
    )
)
methods = st.sampled_from(["proportional", "top_k", "threshold"])
# corpora on which a budget within 1% is reachable: many documents, none large
feasible_corpora = st.integers(min_value=300, max_value=600).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(min_value=1, max_value=200), min_size=n, max_size=n),
    )
)


def make(method, budget, cap=3, threshold=0.3, temperature=1.0):
    return MixConfig(method=method, token_budget=budget, max_repeats=cap, threshold=threshold, temperature=temperature)


@settings(max_examples=60, deadline=None)
@given(corpus=corpora, method=methods, fraction=st.floats(0.05, 2.0), cap=st.integers(1, 5),
       temperature=st.floats(0.25, 4.0), seed=st.integers(0, 2**31))
def test_copies_are_non_negative_capped_and_deterministic(corpus, method, fraction, cap, temperature, seed):
    scores, tokens = map(np.array, corpus)
    ids = [f"doc-{i}" for i in range(len(scores))]
    cfg = make(method, max(1, int(fraction * tokens.sum())), cap=cap, temperature=temperature)
    event(f"method {method}")
    repeats, weights = choose_repeats(ids, scores, tokens, cfg, seed)
    assert (repeats >= 0).all() and (weights >= 0).all()
    assert repeats.max() <= (cap if method != "top_k" else 1)
    assert (repeats * tokens).sum() <= cfg.token_budget
    again, again_weights = choose_repeats(ids, scores, tokens, cfg, seed)
    assert (again == repeats).all() and (again_weights == weights).all()


@settings(max_examples=90, deadline=None)
@given(corpus=feasible_corpora, method=methods, position=st.floats(0.0, 1.0), cap=st.integers(1, 5),
       seed=st.integers(0, 99))
def test_budget_met_within_one_percent_when_reachable(corpus, method, position, cap, seed):
    """Every method, on budgets drawn between 100x the largest document and what the eligible
    documents can give (so no draw is thrown away unless the corpus itself cannot reach it)."""
    scores, tokens = map(np.array, corpus)
    ids = [f"doc-{i}" for i in range(len(scores))]
    eligible = {"threshold": scores >= 0.3, "proportional": scores >= MIN_WEIGHT, "top_k": scores >= 0}[method]
    capacity = int((tokens * eligible).sum() * (1 if method == "top_k" else cap))
    smallest = 100 * int(tokens.max())  # no document is more than 1% of the budget
    assume(capacity >= smallest)
    budget = int(smallest + position * (capacity - smallest))
    event(f"method {method}")
    repeats, _ = choose_repeats(ids, scores, tokens, make(method, budget, cap=cap), seed)
    total = (repeats * tokens).sum()
    assert abs(total / budget - 1) <= 0.01, (total, budget)


def test_higher_scores_get_more_copies_in_proportional_mixes():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 5_000)
    tokens = rng.integers(100, 1_000, 5_000)
    ids = [str(i) for i in range(5_000)]
    repeats, _ = choose_repeats(ids, scores, tokens, make("proportional", int(tokens.sum()), cap=4), 0)
    low, high = repeats[scores < 0.25].mean(), repeats[scores > 0.75].mean()
    assert high > 2.5 * low
