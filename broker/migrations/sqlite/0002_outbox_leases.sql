-- With RabbitMQ configured the mailbox is the transactional outbox: a relay leases rows until this
-- time (unix microseconds), publishes them, and deletes them once RabbitMQ confirms.
ALTER TABLE mailbox ADD COLUMN lease_until INTEGER;
