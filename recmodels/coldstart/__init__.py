"""Cold start: users and items with no (or very few) interactions, and which strategy served each of them.

- :mod:`~recmodels.coldstart.attribute_popularity`: popularity within user-attribute segments, with back-off.
- :mod:`~recmodels.coldstart.content`: TF-IDF content scoring over item attributes and the hybrid blend.
- :mod:`~recmodels.coldstart.chain`: the declared fallback chain with per-cell strategy labels.
"""

from recmodels.coldstart.attribute_popularity import (
    SegmentPopularity,
    SegmentPopularityConfig,
    UserAttributes,
    encode_user_attributes,
)
from recmodels.coldstart.chain import ColdStartChain, ColdStartConfig
from recmodels.coldstart.content import (
    ContentConfig,
    ContentScorer,
    ItemFeatures,
    blend_scores,
    encode_item_features,
    tfidf,
    tokenize,
)

__all__ = [
    "ColdStartChain",
    "ColdStartConfig",
    "ContentConfig",
    "ContentScorer",
    "ItemFeatures",
    "SegmentPopularity",
    "SegmentPopularityConfig",
    "UserAttributes",
    "blend_scores",
    "encode_item_features",
    "encode_user_attributes",
    "tfidf",
    "tokenize",
]
