"""The Celery worker: consumes one environment's queue and upserts each match into that environment's database."""
