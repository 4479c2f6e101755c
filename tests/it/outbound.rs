//! Outbound: webhooks, delivery, retries.
