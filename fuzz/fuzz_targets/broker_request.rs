//! Every request message of the broker's gRPC services, decoded from the bytes as tonic decodes a
//! request body and parsed as the gateway parses it before any workflow runs. The first byte
//! chooses the message ([`REQUESTS`], in the order of the services' protos); the rest is the
//! message. A parse may refuse, naming a field; it may not panic or hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use spean_broker::error::FieldError;
use spean_broker::ids::{ProvinceCode, ReferralId};
use spean_broker::referral::{Code, Day, EventDetails};
use spean_broker::wire::{self, FeedbackRequest};
use spean_proto::v1 as pb;

/// The request messages, by the first byte (modulo their number). `fuzz/tests/seeds.rs` writes
/// the seeds with the same numbering.
const REQUESTS: usize = 24;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    // A message that does not decode is refused by tonic before the gateway sees it.
    let _ = parse(usize::from(which) % REQUESTS, bytes);
});

/// `Ok(None)` when the bytes are not the message; `Err` when the gateway refuses its content.
fn parse(which: usize, bytes: &[u8]) -> Result<Option<()>, FieldError> {
    macro_rules! decode {
        ($message:ty) => {
            match <$message>::decode(bytes) {
                Ok(message) => message,
                Err(_) => return Ok(None),
            }
        };
    }
    let named = |r: Result<(), FieldError>| {
        if let Err(e) = &r {
            // A refusal names the field a caller must fix.
            assert!(!e.field.is_empty(), "a refusal without a field: {e:?}");
        }
        r.map(Some)
    };
    named(match which {
        // ReferralService
        0 => wire::new_referral(decode!(pb::SubmitRequest)).map(drop),
        1 => ReferralId::parse("referral_id", &decode!(pb::GetRequest).referral_id).map(drop),
        2 => wire::list_query(&decode!(pb::ListRequest)).map(drop),
        3 => action(decode!(pb::AcknowledgeRequest)),
        4 => action(decode!(pb::AcceptRequest)),
        5 => action(decode!(pb::DeclineRequest)),
        6 => action(decode!(pb::RedirectRequest)),
        7 => action(decode!(pb::MarkInProgressRequest)),
        8 => action(decode!(pb::RecordFollowUpRequest)),
        9 => action(decode!(pb::CompleteRequest)),
        10 => action(decode!(pb::FailRequest)),
        11 => action(decode!(pb::WithdrawRequest)),
        12 => action(decode!(pb::MarkEnteredInErrorRequest)),
        13 => action(decode!(pb::DelegateFollowUpRequest)),
        14 => action(decode!(pb::RevokeDelegationRequest)),
        15 => wire::period(decode!(pb::FiguresRequest)).map(drop),
        // DeliveryService: the first message of a stream, then each one after it.
        16 => wire::hello_window(Some(decode!(pb::SubscribeRequest))).map(drop),
        17 => wire::confirmation(decode!(pb::SubscribeRequest)).map(drop),
        // DirectoryService (ListProvinces and ListKinds carry nothing to parse).
        18 => {
            let req = decode!(pb::ListAgenciesRequest);
            (!req.service.is_empty())
                .then(|| Code::parse("service", &req.service))
                .transpose()?;
            (!req.province.is_empty())
                .then(|| ProvinceCode::parse("province", &req.province))
                .transpose()
                .map(drop)
        }
        19 => {
            let req = decode!(pb::ResolveServiceRequest);
            Code::parse("service", &req.service)?;
            ProvinceCode::parse("province", &req.province).map(drop)
        }
        // CoordinatorService (its Figures takes the FiguresRequest above).
        20 => {
            let req = decode!(pb::ListOverdueRequest);
            wire::overdue_filter(&req)?;
            wire::page_size(req.page_size)?;
            wire::page_offset(&req.page_token).map(drop)
        }
        21 => ReferralId::parse("referral_id", &decode!(pb::TimelineRequest).referral_id).map(drop),
        // ReferralService, added after the rest.
        22 => action(decode!(pb::WithdrawConsentRequest)),
        _ => {
            decode!(pb::ListProvincesRequest);
            decode!(pb::ListKindsRequest);
            Ok(())
        }
    })
}

/// A feedback action, parsed. The date it keeps as text must read back as the same date: the
/// store and every reader parse it again.
fn action(request: impl FeedbackRequest) -> Result<(), FieldError> {
    let action = request.into_action()?;
    if let EventDetails::Accepted {
        planned_date: date, ..
    }
    | EventDetails::FollowUp { date, .. } = &action.details
    {
        let again = Day::parse("date", date).map(|day| day.to_string());
        assert_eq!(again.as_ref(), Ok(date), "a parsed date does not read back");
    }
    Ok(())
}
