//! What keeps one party from blocking the others: the connection limit, the TLS handshake
//! timeout, the limit on delivery streams per agency, and the rate of calls per agency.

use std::time::Duration;

use spean_proto::v1 as pb;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::{Client, spawn_broker_with, subscribe};

/// Whether the broker closed `socket` within `limit`.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, socket.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Sockets that never start a TLS handshake are closed once the handshake timeout passes, those
/// over the connection limit at once, and an agency connecting meanwhile is served.
#[tokio::test]
async fn idle_sockets_are_closed_and_an_agency_still_connects() {
    let broker = spawn_broker_with(|c| {
        c.limits.max_connections = 8;
        c.limits.handshake_timeout_ms = 500;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    // The last one is over the limit: closed as soon as it is accepted.
    let last = idle.last_mut().unwrap();
    assert!(
        closed_within(last, Duration::from_millis(400)).await,
        "a connection over the limit was held"
    );
    for socket in &mut idle {
        assert!(
            closed_within(socket, Duration::from_secs(5)).await,
            "an idle socket was held past the handshake timeout"
        );
    }

    // Another wave of idle sockets is open while the agency connects; it gets a place as soon as
    // one is free, at worst after the handshake timeout.
    let mut again = Vec::new();
    for _ in 0..8 {
        again.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    let listed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let dir = broker.identity_dir("mlup-russey");
            let channel = broker
                .channel(
                    Some((dir.join("cert.pem"), dir.join("key.pem"))),
                    &broker.pki().join("ca.pem"),
                )
                .await;
            if let Ok(channel) = channel {
                let mut client = Client::new(channel);
                if let Ok(list) = client.referrals.list(pb::ListRequest::default()).await {
                    return list.into_inner();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(listed.is_ok(), "the agency could not connect");
    drop(again);
    broker.stop().await;
}

/// An agency may hold `limits.max_streams_per_agency` delivery streams; one more is refused with
/// RESOURCE_EXHAUSTED naming the limit, other agencies are not affected, and closing a stream
/// gives its place back.
#[tokio::test]
async fn an_agency_over_its_delivery_stream_limit_is_refused() {
    let broker = spawn_broker_with(|c| c.limits.max_streams_per_agency = 2).await;
    let mut ngo = broker.client("mlup-russey").await;
    let first = subscribe(&mut ngo).await;
    let _second = subscribe(&mut ngo).await;

    let hello = pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Hello(pb::Hello {
            window: 8,
        })),
    };
    let refused = ngo
        .delivery
        .subscribe(tokio_stream::iter(vec![hello.clone()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("limits.max_streams_per_agency"),
        "{}",
        refused.message()
    );

    let mut hospital = broker.client("ahc-swu").await;
    let _theirs = subscribe(&mut hospital).await;

    drop(first);
    let reopened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(hello.clone()).await.unwrap();
            if let Ok(stream) = ngo
                .delivery
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                return (tx, stream);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        reopened.is_ok(),
        "a closed stream did not give its place back"
    );
    broker.stop().await;
}

/// One agency calling faster than `limits.requests_per_second_per_agency` allows is refused with
/// RESOURCE_EXHAUSTED naming the limit and told when to retry, before anything is read or
/// written; another agency's calls go through all the while, and the flooding agency's are
/// answered again once it slows down.
#[tokio::test]
async fn an_agency_over_its_request_rate_is_told_to_wait_and_the_others_are_not() {
    let broker = spawn_broker_with(|c| {
        c.limits.requests_per_second_per_agency = 5;
        c.limits.request_burst_per_agency = 5;
    })
    .await;
    let mut flooding = broker.client("mith-samlanh").await;
    let mut hospital = broker.client("ahc-swu").await;
    let list = || pb::ListRequest::default();
    let mut refused = None;
    let mut answered = 0;
    for _ in 0..20 {
        match flooding.referrals.list(list()).await {
            Ok(_) => answered += 1,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    // The burst, and at most a call or two more that the rate refilled meanwhile.
    assert!((5..=7).contains(&answered), "{answered}");
    let refused = refused.expect("a call over the rate");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .starts_with("mith-samlanh is over limits.requests_per_second_per_agency (5 calls"),
        "{}",
        refused.message()
    );
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("when to retry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=200).contains(&pushback), "{pushback}");
    // Another agency is not held back, and a submit of its own goes through.
    hospital
        .submit(crate::helpers::lama("rate-1"))
        .await
        .unwrap();
    // Once it waited as told, the flooding agency is answered again.
    tokio::time::sleep(Duration::from_millis(pushback + 10)).await;
    flooding.referrals.list(list()).await.unwrap();
    broker.stop().await;
}
