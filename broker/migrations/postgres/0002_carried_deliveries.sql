-- With RabbitMQ configured, a mailbox row may carry its delivery as the relay will publish it: a
-- `spean.v1.Delivery` without its `delivery_id`, encoded when the change was written. The relay then
-- publishes it without reading the referral or event back. NULL: the relay loads the content when it
-- publishes (rows written before this column, embedded delivery, and the referral itself sent on a
-- redirect). A redirect clears the body of the referral still queued for the former recipient, so
-- that delivery is loaded at publish time and loses the case file, as it always did.
ALTER TABLE mailbox ADD COLUMN body BYTEA;
