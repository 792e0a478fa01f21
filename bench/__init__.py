"""inctrl_bench: latency and throughput measurements of inctrl's backends."""
