"""Code every refnet service uses: settings, event contracts, Kafka/Postgres plumbing.

This package never imports from ``services``.
"""
