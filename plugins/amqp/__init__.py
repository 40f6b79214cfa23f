"""amqp:// transport (placeholder until the AMQP issue lands)."""
