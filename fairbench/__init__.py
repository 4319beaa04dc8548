"""fairbench: demographic fairness benchmark for text-to-image diffusion models."""

__version__ = "0.1.0"
DISTRIBUTION = "fairbench-t2i"  # the package index name; "fairbench" there is another project
