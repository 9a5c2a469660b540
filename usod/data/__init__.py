"""Datasets, datamodules, transforms and the synthetic data generator."""
