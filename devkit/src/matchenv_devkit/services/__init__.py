"""Private RabbitMQ and PostgreSQL servers on loopback, started by tests and the demo."""
