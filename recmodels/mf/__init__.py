"""Matrix factorisation models.

- ``pure_svd`` — truncated SVD of the interaction matrix, for ranking (Cremonesi et al. 2010).
- ``biased_mf`` — global mean + user/item biases + factors, ALS on observed ratings (the "Funk SVD" model); its
  per-row ridge solves are in ``ridge``.
- ``nmf`` — non-negative factors fitted to observed ratings only by masked multiplicative updates.
- ``als`` / ``bpr`` — implicit-feedback factor models in torch (their own modules).

The package imports nothing eagerly, so a numpy-only model never pulls in torch.
"""
