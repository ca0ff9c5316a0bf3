"""RabbitMQ topology: the management-API client, the broker snapshot, the pure planner and the applier."""
