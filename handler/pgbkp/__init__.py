"""pg-bkp: streaming PostgreSQL backups to S3."""

__version__ = "0.1.0"
