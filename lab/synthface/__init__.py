"""Rebuilding the synthface worlds: captions, training stages, the classifier, install, sample grids."""
