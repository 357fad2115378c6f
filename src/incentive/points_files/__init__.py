"""Partner points files: intake, the durable pipeline (staging, crediting, answers), the v1
format, OpenPGP, and the transports and crediting targets behind ``backends/``."""
