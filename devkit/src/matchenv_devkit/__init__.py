"""matchenv's development kit: builds and runs a real local Kubernetes control plane, a node agent, private
RabbitMQ and PostgreSQL servers, the operator as a process, and the demo. For tests and laptops only: it is a
distribution of its own (``matchenv-devkit``), never in the ``matchenv`` wheel or image."""
