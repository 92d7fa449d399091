//! One suite of store tests, run against every backend: each check below runs once on SQLite
//! (`on_sqlite::…`) and once on PostgreSQL (`on_postgres::…`), each time on a fresh database
//! ([`fixture`]). A check is an `async fn(Fixture)` in the module of its topic.

mod audit;
mod broadcasts;
mod changes;
mod concurrency;
mod consent;
mod coordination;
mod deadlines;
mod directory;
mod escalation;
mod fixture;
mod follow_ups;
mod mailbox;
mod reads;
mod revocations;
mod sample;
mod sealing;
mod submits;

/// Generates one test per backend for each conformance check, named after the check.
macro_rules! conformance {
    ($($topic:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        mod on_sqlite {
            $($(
                #[tokio::test]
                async fn $name() {
                    super::$topic::$name(super::fixture::sqlite().await).await;
                }
            )*)*
        }
        mod on_postgres {
            $($(
                #[tokio::test]
                async fn $name() {
                    super::$topic::$name(super::fixture::postgres().await).await;
                }
            )*)*
        }
    };
}

conformance!(
    audit: [
        every_accepted_action_is_logged_once_in_a_chain_that_verifies,
        a_tampered_copy_of_the_log_names_its_first_bad_entry,
        submits_made_at_once_each_get_one_entry_in_one_chain,
    ],
    consent: [
        a_referral_goes_only_with_consent_or_its_kinds_emergency_exception,
        nothing_is_shared_beyond_what_consent_covers,
        a_withdrawal_of_consent_ends_the_referral_and_forgets_what_was_sealed,
    ],
    submits: [
        a_submitted_referral_reads_back_byte_for_byte,
        a_reused_client_ref_returns_the_existing_referral,
        submits_made_at_once_are_each_written_whole,
    ],
    changes: [
        a_change_applies_only_to_the_version_it_read,
        a_repeated_request_id_returns_the_first_event,
        history_is_ordered_and_append_only,
        a_redirect_grants_access_to_the_new_recipient,
        changes_applied_together_each_apply_to_the_version_they_read,
        a_refused_change_among_others_leaves_nothing_of_itself,
        confirmations_that_arrive_together_record_each_delivery_once,
    ],
    reads: [
        listing_filters_and_pages,
        deliveries_load_in_batches_with_their_histories,
        a_snapshot_holds_the_referral_its_parties_and_its_history,
        parties_now_follow_a_redirect_and_leave_unknown_ids_out,
        a_pseudonym_lists_only_the_callers_own_referrals,
    ],
    mailbox: [
        the_mailbox_keeps_order_and_forgets_confirmed_entries,
        outbox_leases_hand_each_row_to_one_relay,
        held_deliveries_stay_out_of_leases_until_their_hold_runs_out,
        carried_deliveries_come_back_with_their_lease_but_not_to_a_former_recipient,
        tidying_the_outbox_clears_out_published_rows_and_keeps_the_rest,
    ],
    directory: [the_directory_round_trips_and_versions],
    revocations: [
        a_revocation_reads_back_and_the_earlier_of_two_times_stands,
        a_broker_refuses_a_certificate_another_process_revoked,
    ],
    deadlines: [
        a_submitted_deadline_falls_due_once_its_time_has_passed,
        submits_made_at_once_keep_their_deadlines_and_fall_due_oldest_first,
        a_change_sets_clears_or_keeps_the_deadline,
        changes_applied_together_set_clear_and_notify_each_on_their_own,
        of_changes_racing_on_one_version_only_the_winner_moves_the_deadline_and_notifies,
        notified_agencies_gain_access_and_a_party_stays_a_party,
        deadlines_outlive_reopening_the_store,
    ],
    escalation: [
        an_acknowledgement_crossing_its_deadline_is_never_followed_by_an_escalation,
        a_deadline_nobody_answers_escalates_once_per_tier_however_many_look,
    ],
    coordination: [
        a_quarters_figures_match_counts_made_from_the_seeds,
        the_overdue_list_shows_what_waits_in_the_callers_provinces,
    ],
    follow_ups: [
        a_missed_visit_is_recorded_once_however_many_look,
        a_visit_crossing_its_deadline_is_never_followed_by_a_miss,
        a_delegate_records_visits_until_the_delegation_is_taken_back,
    ],
    broadcasts: [
        a_broadcast_reaches_every_candidate_without_its_case_file,
        the_first_acceptance_wins_however_many_candidates_race,
        when_every_candidate_declines_the_sender_is_told_once,
        an_open_broadcast_escalates_until_a_candidate_acknowledges,
        an_agency_the_sender_names_is_notified_and_cannot_act,
        a_referral_follows_one_its_sender_sent_about_the_same_client,
    ],
    sealing: [
        a_case_file_is_stored_with_the_boxes_of_its_sender_and_recipients_only,
        a_redirects_box_reaches_the_new_recipient_and_outlives_the_process,
        published_keys_read_back_newest_per_agency_and_each_by_id,
    ],
    concurrency: [
        a_failed_write_leaves_nothing_and_spares_the_writes_beside_it,
        concurrent_changes_on_one_version_record_exactly_one,
        concurrent_retries_of_one_request_record_it_once,
        concurrent_submits_of_one_client_ref_create_one_referral,
        crossing_batches_of_changes_record_each_change_once,
        one_action_sent_at_once_many_times_answers_each_with_its_one_event,
    ],
);

/// A check that only PostgreSQL can run: it holds a row lock from outside the store.
#[tokio::test]
async fn on_postgres_apply_all_returns_after_an_error_only_once_every_change_is_decided() {
    changes::apply_all_returns_after_an_error_only_once_every_change_is_decided(
        fixture::postgres().await,
    )
    .await;
}

/// Every PostgreSQL session of the store carries the limits it was given: a statement stuck behind
/// a lock, or a transaction left open by a broker cut off mid-way, is ended by the server, and the
/// server probes the broker's socket so that it notices a broker gone without a reset.
#[tokio::test]
async fn on_postgres_every_session_carries_the_statement_timeout_and_keepalive() {
    let f = fixture::postgres().await;
    let pg = f.pg.as_ref().unwrap();
    for (setting, expected) in [
        ("statement_timeout", "4321ms"),
        ("idle_in_transaction_session_timeout", "4321ms"),
        ("tcp_keepalives_idle", "7"),
        ("tcp_keepalives_interval", "7"),
        ("tcp_keepalives_count", "3"),
    ] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(pg.pool())
            .await
            .unwrap();
        assert_eq!(value, expected, "{setting}");
    }
    let stuck = sqlx::query("SELECT pg_sleep(30)").execute(pg.pool()).await;
    let refused = stuck
        .expect_err("the statement ran past its timeout")
        .to_string();
    assert!(refused.contains("statement timeout"), "{refused}");
}
