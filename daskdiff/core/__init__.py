"""Numeric core: numpy arrays in, numpy arrays out. Imports numpy and scipy only (a test proves it)."""
