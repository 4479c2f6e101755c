//! Outbound routes: webhooks (subscriptions), their deliveries, the event-type catalog and
//! `POST /v1/events`. Writes go to the delivery registry; reads come from the store.

use super::{HttpState, Request, Response};

/// Routes under `/v1/organizations/webhooks` and `/v1/events`.
pub async fn route(_state: &HttpState, _req: &Request, _segs: &[&str]) -> (&'static str, Response) {
    ("(unknown)", super::error_response(&super::not_found_route()))
}
