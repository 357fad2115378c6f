"""The partner-facing ends of the pipeline, each one protocol with its implementations:
``transports`` (where files come from and answers go: local directory, SFTP) and ``targets``
(where points are credited: the ledger, an external loyalty system over HTTP)."""
