"""ShopFusion: the pipeline stages, one module per stage."""

__version__ = "0.1.0"
