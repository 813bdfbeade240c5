"""Data: the source adapters (the generated sample shop, Home Depot, ReChorus, sequence files), text repair,
and the feature tables as later stages read them (splits, requests). Imports only core."""
