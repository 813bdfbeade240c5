"""What the Airflow DAGs call: the training DAG built from dvc.yaml (dvc_dag.py) and the DVC task runner.
Imports only core: a DAG file is parsed often and must stay light."""
