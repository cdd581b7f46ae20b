"""trafficsplit benchmarks: each part measures baselines and trafficsplit in one run."""
