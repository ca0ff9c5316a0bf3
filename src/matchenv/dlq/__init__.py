"""Dead letters users can act on: ``matchenv dlq list|show|redrive|purge`` (also ``kubectl matchenv dlq``)."""
