"""Studies: search spaces (YAML), the Optuna sampler, Ray Tune trials of `lab.train.run.train`,
and the Parquet store of every trial."""
