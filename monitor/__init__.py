"""Real-time drift monitor: book exposures against policy targets, on Kafka."""

__version__ = "0.1.0"
