"""Store-and-forward sync: the MQTT client, the topic layout and the durable outbox."""
