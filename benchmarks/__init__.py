"""What `make bench` measures, and the references a `train` process is measured against."""
