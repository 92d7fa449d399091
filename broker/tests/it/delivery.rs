//! The `Subscribe` stream itself: how it opens and how it ends. What it delivers, on either
//! backend, is the delivery conformance suite's (`delivery_conformance.rs`).

use crate::helpers::{confirm, spawn_broker, subscribe};

#[tokio::test]
async fn a_stream_must_open_with_a_hello() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(confirm("nothing")).await.unwrap();
    let err = ngo
        .delivery
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("hello:"));
}

#[tokio::test]
async fn shutdown_ends_open_delivery_streams_and_returns() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    let (_tx, mut stream) = subscribe(&mut ngo).await;
    tokio::time::timeout(std::time::Duration::from_secs(15), broker.stop())
        .await
        .expect("the broker did not stop with a stream open");
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("the stream stayed open");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
