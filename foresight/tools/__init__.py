"""Tools around the services: demo, synthetic data, local runs, map and report rendering, proto generation."""
