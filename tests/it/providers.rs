//! Mux and Supabase adapters, Mux lifecycle webhooks.
