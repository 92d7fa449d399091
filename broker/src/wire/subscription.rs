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

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(window: u32) -> Option<pb::SubscribeRequest> {
        Some(pb::SubscribeRequest {
            request: Some(Request::Hello(pb::Hello { window })),
        })
    }

    #[test]
    fn the_window_is_sixty_four_by_default_and_at_most_a_thousand() {
        assert_eq!(hello_window(hello(0)), Ok(64));
        assert_eq!(hello_window(hello(1000)), Ok(1000));
        for window in [1001, 65_536, u32::MAX] {
            assert_eq!(
                hello_window(hello(window)).unwrap_err().field,
                "hello.window"
            );
        }
    }

    #[test]
    fn a_stream_opens_with_a_hello_and_continues_with_confirmations() {
        let confirm = |id: &str| pb::SubscribeRequest {
            request: Some(Request::Confirm(pb::Confirm {
                delivery_id: id.into(),
            })),
        };
        assert_eq!(hello_window(None).unwrap_err().field, "hello");
        assert_eq!(hello_window(Some(confirm(""))).unwrap_err().field, "hello");
        let id = uuid::Uuid::now_v7();
        assert_eq!(confirmation(confirm(&id.to_string())), Ok(id));
        assert_eq!(
            confirmation(confirm("nope")).unwrap_err().field,
            "confirm.delivery_id"
        );
        assert_eq!(
            confirmation(hello(0).unwrap()).unwrap_err().field,
            "request"
        );
    }
}
