"""Partner points files: format, OpenPGP, transports and the adaptive crediting limiter."""
