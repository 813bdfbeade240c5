"""The DVC stages, thin: read files, call the libraries, write files. `dvc repro`, the CLI, the Airflow DAGs
and the benchmarks run them; no stage imports another (DVC and Airflow chain them)."""
