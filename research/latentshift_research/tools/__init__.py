"""Tools around the product: the benchmark (``bench``) and the load test (``loadtest``)."""
