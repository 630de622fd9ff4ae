"""Neighbourhood (collaborative filtering) models."""
