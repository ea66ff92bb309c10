"""Benchmarks (not tests): full-size SD1.5 UNet architecture with random weights.

``make bench`` (``python -m bench``) times each method against plain sampling of the same
frames and steps in the same run and reports ratios, peak memory, and a JSON file. Speed does
not depend on the weights, so random weights are enough.
"""
