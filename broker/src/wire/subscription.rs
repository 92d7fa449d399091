//! The delivery stream's requests: the hello that opens it and the confirmations that follow.

use spean_proto::v1 as pb;
use spean_proto::v1::subscribe_request::Request;

use crate::error::FieldError;

/// The window when the adapter asks for none.
const DEFAULT_WINDOW: u16 = 64;
/// The most unconfirmed deliveries one stream may hold.
const MAX_WINDOW: u32 = 1000;

/// The window the first message of a stream asks for; the first message must be a hello.
pub fn hello_window(first: Option<pb::SubscribeRequest>) -> Result<u16, FieldError> {
    match first {
        Some(pb::SubscribeRequest {
            request: Some(Request::Hello(hello)),
        }) => match hello.window {
            0 => Ok(DEFAULT_WINDOW),
            n => u16::try_from(n)
                .ok()
                .filter(|_| n <= MAX_WINDOW)
                .ok_or_else(|| {
                    FieldError::new(
                        "hello.window",
                        format!("{n} is over the limit of {MAX_WINDOW}"),
                    )
                }),
        },
        _ => Err(FieldError::new(
            "hello",
            "the first message on the stream must be a hello",
        )),
    }
}

/// The delivery a message after the hello confirms; anything but a confirmation is refused.
pub fn confirmation(req: pb::SubscribeRequest) -> Result<uuid::Uuid, FieldError> {
    match req.request {
        Some(Request::Confirm(c)) => uuid::Uuid::parse_str(&c.delivery_id)
            .map_err(|_| FieldError::new("confirm.delivery_id", "is not a delivery id")),
        _ => Err(FieldError::new(
            "request",
            "only confirm may follow the hello",
        )),
    }
}
