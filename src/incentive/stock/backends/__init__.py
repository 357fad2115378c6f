"""Stock engine backends: embedded (in-process), Redis, Redis Cluster."""
