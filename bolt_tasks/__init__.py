"""bolt: a Celery + Redis task platform whose P pool runs heavy work and E pool light work."""
