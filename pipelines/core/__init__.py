"""The base layer: config, errors, logs, file formats (raw CSV, atomic writes), the data contract, metrics,
device choice, privacy, the shared vocabulary (items, requests) and the import graph. Imports nothing else of pipelines."""
