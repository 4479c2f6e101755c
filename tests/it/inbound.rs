//! Inbound: source adapters, ingest, objects, batches.
