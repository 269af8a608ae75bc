"""MLflow: the store, a run's life, the logger (store I/O only), offline spool, history, runner."""
