"""KFP pipelines (DAGs of shipyard components) and their YAML profiles under ``configs/``."""
