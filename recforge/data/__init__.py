"""The data contract and the sources that produce it."""

from recforge.data.contract import ITEM, RATING, TIMESTAMP, USER, DataError, Dataset

__all__ = ["ITEM", "RATING", "TIMESTAMP", "USER", "DataError", "Dataset"]
