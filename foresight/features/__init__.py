"""Feature engineering: labels without leakage, automatic features, journey vectors."""
