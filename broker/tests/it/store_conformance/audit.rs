//! The audit log: every accepted action appends one entry, in its own transaction, and the chain
//! then names the first entry of a tampered copy, through the store and through
//! `spean-broker audit verify`.

use std::process::Command;
use std::sync::Arc;

use spean_broker::referral::{EventKind, State};
use spean_broker::store::audit::{self, AuditBreak, BreakKind, Head};
use spean_broker::store::{ChangeOutcome, Store, SubmitOutcome};

use super::fixture::Fixture;
use super::sample::{change, event, referral, submit};

/// Writes six entries' worth of accepted actions, with replays and a stale change among them that
/// must add none; returns the head.
async fn accept_actions(store: &Arc<dyn Store>) -> Head {
    let a = submit(store, "audit-1").await;
    let b = submit(store, "audit-2").await;
    // The same client_ref again: the existing referral, no entry.
    let again = referral("audit-1");
    let first = event(&again, EventKind::Submitted, "ahc-swu", State::Sent, None);
    assert!(matches!(
        store.submit(&again, &first, &[], None).await.unwrap(),
        SubmitOutcome::Existing(_)
    ));
    let ack = |r| {
        change(
            r,
            1,
            event(
                r,
                EventKind::Acknowledged,
                "mlup-russey",
                State::Acknowledged,
                Some("ack-1"),
            ),
            State::Acknowledged,
        )
    };
    let acked = ack(&a);
    assert!(matches!(
        store.apply(&acked).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    // A retry of the same request: the first event, no entry.
    assert!(matches!(
        store.apply(&acked).await.unwrap(),
        ChangeOutcome::Duplicate(_)
    ));
    // Stale: decided on version 1, which is gone.
    let stale = change(
        &a,
        1,
        event(
            &a,
            EventKind::Declined,
            "mlup-russey",
            State::Declined,
            None,
        ),
        State::Declined,
    );
    assert!(matches!(
        store.apply(&stale).await.unwrap(),
        ChangeOutcome::Stale
    ));
    // Two changes together (a delivery stream's confirmations), each its own entry.
    let delivered = |r, v| {
        change(
            r,
            v,
            event(
                r,
                EventKind::Delivered,
                "mlup-russey",
                State::Delivered,
                None,
            ),
            State::Delivered,
        )
    };
    let outcomes = store
        .apply_all(&[delivered(&a, 2), delivered(&b, 1)])
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ChangeOutcome::Recorded))
    );
    store.audit_head().await.unwrap().unwrap()
}

pub(super) async fn every_accepted_action_is_logged_once_in_a_chain_that_verifies(f: Fixture) {
    let head = accept_actions(&f.store).await;
    let entries = f.store.audit_entries(0, 100).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "submitted",
            "submitted",
            "acknowledged",
            "delivered",
            "delivered"
        ]
    );
    assert_eq!(head.seq, 5);
    assert_eq!(
        audit::verify(f.store.as_ref(), Some(head)).await.unwrap(),
        Ok(Some(head))
    );
    // Who, which referral, and a digest: never the case file or the note.
    let first = &entries[0].record;
    assert_eq!(first.actor, "ahc-swu");
    assert!(first.referral_id.is_some());
    assert_eq!(first.digest.len(), 32);
}

/// One tampering of a copy of the log: the statements, and what verification must then say.
struct Tampering {
    name: &'static str,
    statements: &'static [&'static str],
    broken: AuditBreak,
}

const TAMPERINGS: [Tampering; 4] = [
    Tampering {
        name: "a changed field",
        statements: &["UPDATE audit_log SET actor = 'dosvy-24' WHERE seq = 3"],
        broken: AuditBreak {
            seq: 3,
            kind: BreakKind::Changed,
        },
    },
    Tampering {
        name: "a deleted middle row",
        statements: &["DELETE FROM audit_log WHERE seq = 3"],
        broken: AuditBreak {
            seq: 3,
            kind: BreakKind::Removed,
        },
    },
    Tampering {
        name: "two swapped rows",
        statements: &[
            "UPDATE audit_log SET seq = -1 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = -1",
        ],
        broken: AuditBreak {
            seq: 2,
            kind: BreakKind::Reordered,
        },
    },
    Tampering {
        name: "a deleted tail",
        statements: &["DELETE FROM audit_log WHERE seq > 3"],
        broken: AuditBreak {
            seq: 4,
            kind: BreakKind::Truncated,
        },
    },
];

pub(super) async fn a_tampered_copy_of_the_log_names_its_first_bad_entry(f: Fixture) {
    let head = accept_actions(&f.store).await;
    for tampering in &TAMPERINGS {
        let copy = f.copy_of_audit_log().await;
        assert_eq!(
            audit::verify(copy.store.as_ref(), Some(head))
                .await
                .unwrap(),
            Ok(Some(head)),
            "the untouched copy of the log verifies"
        );
        for statement in tampering.statements {
            copy.raw(statement).await.unwrap();
        }
        assert_eq!(
            audit::verify(copy.store.as_ref(), Some(head))
                .await
                .unwrap(),
            Err(tampering.broken),
            "{}",
            tampering.name
        );
        // Through the command line, as an operator runs it.
        let out = verify_cli(&copy, Some(head));
        assert!(!out.status.success(), "{}: {out:?}", tampering.name);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("BROKEN at entry {}", tampering.broken.seq)),
            "{}: {said}",
            tampering.name
        );
    }
    // A cut tail is invisible without a head recorded elsewhere: that is what the head is for.
    let copy = f.copy_of_audit_log().await;
    copy.raw("DELETE FROM audit_log WHERE seq > 3")
        .await
        .unwrap();
    assert!(
        audit::verify(copy.store.as_ref(), None)
            .await
            .unwrap()
            .is_ok()
    );
    let out = verify_cli(&copy, None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit log OK: 3 entries"));
}

/// `spean-broker audit verify [--head …]` on the fixture's database, with nothing else from the
/// environment.
fn verify_cli(f: &Fixture, head: Option<Head>) -> std::process::Output {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_spean-broker"));
    command
        .arg("--data-dir")
        .arg(data.path())
        .args(["audit", "verify"])
        .env_clear()
        .env("SPEAN_BROKER_DATABASE__URL", f.database_url());
    if let Some(head) = head {
        command.args(["--head", &head.to_string()]);
    }
    command.output().unwrap()
}

/// Submits that arrive together are written in batches (on PostgreSQL, one statement each, from
/// several brokers' worth of writers): each still gets one entry, and the chain holds.
pub(super) async fn submits_made_at_once_each_get_one_entry_in_one_chain(f: Fixture) {
    let n = 48;
    super::sample::all_at_once(&f.store, n, |i, store| async move {
        submit(&store, &format!("audit-many-{i}")).await;
    })
    .await;
    let head = audit::verify(f.store.as_ref(), None)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(head.seq, n as u64);
}
