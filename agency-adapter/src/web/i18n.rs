//! The pages' two languages. Every word a page shows is a field of [`Text`], written once in
//! English ([`EN`]) and once in Khmer ([`KM`]): a word missing in one language does not compile.
//! Words that come from the network (states, kinds, urgencies, event kinds) are translated by
//! [`Lang::code_label`], falling back to the code itself for a code the network added later.
//!
//! Numbers and dates are written the way each language writes them: Khmer digits (០–៩) and
//! Khmer month names in Khmer, and every time in Cambodia's time (UTC+7), where the network is.

use time::{OffsetDateTime, UtcOffset};

/// A language the pages are shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Km,
    En,
}

impl Lang {
    /// `km` or `en`, as stored with a staff member and in the `lang` cookie.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "km" => Some(Self::Km),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Km => "km",
            Self::En => "en",
        }
    }

    /// The language of a browser that has not logged in yet: the first of `km` or `en` its
    /// `Accept-Language` names, else Khmer (the network's staff read Khmer first).
    pub fn from_accept_language(header: Option<&str>) -> Self {
        header
            .into_iter()
            .flat_map(|h| h.split(','))
            .filter_map(|part| part.split(';').next())
            .filter_map(|tag| Self::parse(tag.trim().split('-').next().unwrap_or_default()))
            .next()
            .unwrap_or(Self::Km)
    }

    pub fn t(self) -> &'static Text {
        match self {
            Self::Km => &KM,
            Self::En => &EN,
        }
    }

    /// A whole number, in this language's digits and grouping.
    pub fn number(self, n: impl Into<i64>) -> String {
        let n: i64 = n.into();
        let digits = n.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        let sign = if n < 0 { "-" } else { "" };
        match self {
            Self::En => format!("{sign}{grouped}"),
            Self::Km => format!("{sign}{}", khmer_digits(&grouped)),
        }
    }

    /// A count as agencies report it: "42 (17 F)", "៤២ (ស្រី ១៧)".
    pub fn count(self, total: u32, female: u32) -> String {
        match self {
            Self::En => format!("{} ({} F)", self.number(total), self.number(female)),
            Self::Km => format!("{} (ស្រី {})", self.number(total), self.number(female)),
        }
    }

    /// A moment, in Cambodia's time: "5 Dec 2026, 14:05" or "៥ ធ្នូ ២០២៦ ម៉ោង ១៤:០៥".
    pub fn datetime(self, at: OffsetDateTime) -> String {
        let at = at.to_offset(CAMBODIA);
        let month = usize::from(u8::from(at.month())) - 1;
        match self {
            Self::En => format!(
                "{} {} {}, {:02}:{:02}",
                at.day(),
                MONTHS_EN[month],
                at.year(),
                at.hour(),
                at.minute()
            ),
            Self::Km => khmer_digits(&format!(
                "{} {} {} ម៉ោង {:02}:{:02}",
                at.day(),
                MONTHS_KM[month],
                at.year(),
                at.hour(),
                at.minute()
            )),
        }
    }

    /// A stored RFC 3339 time as [`Lang::datetime`] writes it; text that is not one stays as it is.
    pub fn stored_time(self, raw: &str) -> String {
        match OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
            Ok(at) => self.datetime(at),
            Err(_) => raw.to_owned(),
        }
    }

    /// A day (YYYY-MM-DD) as this language writes it.
    pub fn day(self, raw: &str) -> String {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        match time::Date::parse(raw, format) {
            Ok(day) => {
                let month = usize::from(u8::from(day.month())) - 1;
                match self {
                    Self::En => format!("{} {} {}", day.day(), MONTHS_EN[month], day.year()),
                    Self::Km => khmer_digits(&format!(
                        "{} {} {}",
                        day.day(),
                        MONTHS_KM[month],
                        day.year()
                    )),
                }
            }
            Err(_) => raw.to_owned(),
        }
    }

    /// A length of time, to the two largest units: "2 d 3 h", "២ ថ្ងៃ ៣ ម៉ោង", "45 min".
    pub fn duration(self, seconds: u64) -> String {
        let (d, h, m) = (
            seconds / 86_400,
            seconds % 86_400 / 3_600,
            seconds % 3_600 / 60,
        );
        let t = self.t();
        let parts: Vec<String> = [(d, t.unit_days), (h, t.unit_hours), (m, t.unit_minutes)]
            .into_iter()
            .skip_while(|(n, _)| *n == 0)
            .take(2)
            .filter(|(n, _)| *n > 0)
            .map(|(n, unit)| format!("{} {unit}", self.number(i64::try_from(n).unwrap_or(0))))
            .collect();
        if parts.is_empty() {
            format!("{} {}", self.number(0), t.unit_minutes)
        } else {
            parts.join(" ")
        }
    }

    /// What a code from the network means in this language: a state, a kind, an urgency, an event
    /// kind, a sex or an age band. A code the pages do not know yet is shown as it is.
    pub fn code_label(self, code: &str) -> String {
        let label = CODE_LABELS
            .iter()
            .find(|(c, _, _)| *c == code)
            .map(|(_, en, km)| match self {
                Self::En => *en,
                Self::Km => *km,
            });
        match label {
            Some(label) => label.to_owned(),
            None => code.replace('_', " "),
        }
    }
}

/// Cambodia's time: UTC+7 all year.
pub const CAMBODIA: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

const MONTHS_EN: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const MONTHS_KM: [&str; 12] = [
    "មករា",
    "កុម្ភៈ",
    "មីនា",
    "មេសា",
    "ឧសភា",
    "មិថុនា",
    "កក្កដា",
    "សីហា",
    "កញ្ញា",
    "តុលា",
    "វិច្ឆិកា",
    "ធ្នូ",
];

/// Western digits in `text` written as Khmer digits.
pub fn khmer_digits(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from_u32(0x17E0 + d).unwrap_or(c),
            None => c,
        })
        .collect()
}

/// Codes of the network and what they mean: (code, English, Khmer).
const CODE_LABELS: &[(&str, &str, &str)] = &[
    // States.
    ("sent", "sent", "បានផ្ញើ"),
    ("delivered", "delivered", "បានទៅដល់"),
    ("acknowledged", "acknowledged", "បានទទួលស្គាល់"),
    ("accepted", "accepted", "បានទទួលយក"),
    ("in_progress", "in progress", "កំពុងអនុវត្ត"),
    ("declined", "declined", "បានបដិសេធ"),
    ("completed", "completed", "បានបញ្ចប់"),
    ("failed", "failed", "មិនបានសម្រេច"),
    ("withdrawn", "withdrawn", "បានដកវិញ"),
    ("entered_in_error", "entered in error", "បញ្ចូលដោយច្រឡំ"),
    // Event kinds that are not states.
    ("submitted", "sent", "បានផ្ញើ"),
    ("redirected", "redirected", "បានបញ្ជូនបន្ត"),
    ("follow_up", "follow-up", "ការតាមដាន"),
    ("escalated", "escalated", "បានរាយការណ៍ទៅថ្នាក់លើ"),
    (
        "follow_up_overdue",
        "follow-up visit missed",
        "ខកខានការចុះតាមដាន",
    ),
    (
        "follow_up_delegated",
        "follow-up delegated",
        "បានប្រគល់ការតាមដាន",
    ),
    (
        "delegation_revoked",
        "follow-up taken back",
        "បានដកការតាមដានវិញ",
    ),
    ("consent_withdrawn", "consent withdrawn", "បានដកការយល់ព្រមវិញ"),
    (
        "no_candidate_accepted",
        "no candidate accepted",
        "គ្មានស្ថាប័នណាទទួលយក",
    ),
    // Urgencies.
    ("emergency", "emergency", "បន្ទាន់បំផុត"),
    ("urgent", "urgent", "បន្ទាន់"),
    ("routine", "routine", "ធម្មតា"),
    // Kinds in the network's taxonomy (shared/fixtures/network.json).
    (
        "lama",
        "left hospital against medical advice",
        "ចាកចេញពីមន្ទីរពេទ្យប្រឆាំងនឹងដំបូន្មានវេជ្ជបណ្ឌិត",
    ),
    (
        "abandonment_risk",
        "risk of abandonment",
        "ហានិភ័យនៃការបោះបង់ចោល",
    ),
    ("child_protection", "child protection", "ការការពារកុមារ"),
    ("placement", "placement in care", "ការដាក់ឱ្យស្នាក់នៅក្នុងការថែទាំ"),
    (
        "reintegration_follow_up",
        "reintegration follow-up",
        "ការតាមដានការធ្វើសមាហរណកម្ម",
    ),
    ("psychosocial", "psychosocial support", "ការគាំទ្រផ្លូវចិត្តសង្គម"),
    ("medical", "medical care", "ការថែទាំសុខភាព"),
    ("drug_treatment", "drug treatment", "ការព្យាបាលការញៀនគ្រឿងញៀន"),
    (
        "vocational_training",
        "vocational training",
        "វគ្គបណ្តុះបណ្តាលវិជ្ជាជីវៈ",
    ),
    ("financial_support", "financial support", "ការគាំទ្រផ្នែកហិរញ្ញវត្ថុ"),
    ("legal_support", "legal support", "ជំនួយផ្នែកច្បាប់"),
    ("civil_documentation", "civil documents", "ឯកសារអត្រានុកូលដ្ឋាន"),
    ("emergency_support", "emergency support", "ជំនួយបន្ទាន់"),
    ("transport", "transport", "ការដឹកជញ្ជូន"),
    // Sexes and age bands.
    ("female", "female", "ស្រី"),
    ("male", "male", "ប្រុស"),
    ("other", "other", "ផ្សេងទៀត"),
    ("unknown", "unknown", "មិនដឹង"),
    ("0-4", "0–4 years", "០–៤ ឆ្នាំ"),
    ("5-9", "5–9 years", "៥–៩ ឆ្នាំ"),
    ("10-14", "10–14 years", "១០–១៤ ឆ្នាំ"),
    ("15-17", "15–17 years", "១៥–១៧ ឆ្នាំ"),
    ("18-24", "18–24 years", "១៨–២៤ ឆ្នាំ"),
    ("25-59", "25–59 years", "២៥–៥៩ ឆ្នាំ"),
    ("60+", "60 years and over", "៦០ ឆ្នាំឡើងទៅ"),
    // How an agency stands to a referral.
    ("sender", "its sender", "អ្នកផ្ញើ"),
    ("recipient", "its recipient", "អ្នកទទួល"),
    ("former_recipient", "a former recipient", "អ្នកទទួលពីមុន"),
    ("notified", "told of it (notified)", "ត្រូវបានជូនដំណឹង"),
    ("delegate", "making its follow-up visits", "អ្នកចុះតាមដាន"),
    ("candidate", "one of its candidates", "ស្ថាប័នបេក្ខភាព"),
    // Details of events.
    ("planned_action", "planned action", "សកម្មភាពគ្រោងធ្វើ"),
    ("planned_date", "planned for", "គ្រោងធ្វើនៅ"),
    ("reason_code", "reason code", "កូដមូលហេតុ"),
    ("reason_text", "reason", "មូលហេតុ"),
    ("reason", "reason", "មូលហេតុ"),
    ("to_agency_id", "to", "ទៅ"),
    ("to_agency_ids", "told", "បានជូនដំណឹងទៅ"),
    ("activity", "activity", "សកម្មភាព"),
    ("date", "date", "កាលបរិច្ឆេទ"),
    ("outcome_code", "outcome", "លទ្ធផល"),
    ("summary", "summary", "សេចក្ដីសង្ខេប"),
    ("tier", "tier", "កម្រិត"),
    ("due_at", "was due", "ត្រូវធ្វើនៅ"),
    ("missed_in_a_row", "missed in a row", "ខកខានជាប់ៗគ្នា"),
    ("withdrawn_by", "withdrawn by", "ដកវិញដោយ"),
    ("withdrawn_at", "withdrawn at", "ដកវិញនៅ"),
    (
        "emergency_exception",
        "emergency exception",
        "ករណីលើកលែងបន្ទាន់",
    ),
    ("client", "client", "អតិថិជន"),
    ("referral", "the referral", "ការបញ្ជូន"),
    ("redirect", "sending it on", "ការបញ្ជូនបន្ត"),
    ("broadcast", "several agencies at once", "ស្ថាប័នច្រើនក្នុងពេលតែមួយ"),
    ("notified_parties", "telling others", "ការជូនដំណឹងដល់អ្នកផ្សេង"),
    (
        "follow_up_delegation",
        "delegating follow-up",
        "ការប្រគល់ការតាមដាន",
    ),
    ("guardian", "guardian", "អាណាព្យាបាល"),
    ("home_visit", "home visit", "ការចុះសួរសុខទុក្ខតាមផ្ទះ"),
    ("school_attendance", "school attendance", "ការចូលរៀន"),
    ("grant_received", "grant received", "បានទទួលជំនួយ"),
    ("appointment", "appointment", "ការណាត់ជួប"),
    ("interim_report", "interim report", "របាយការណ៍បណ្ដោះអាសន្ន"),
    ("upcoming", "upcoming", "នឹងមកដល់"),
    ("due", "due", "ដល់ពេល"),
    ("overdue", "overdue", "ហួសពេល"),
    // Overdue reasons.
    (
        "not_acknowledged",
        "not acknowledged in time",
        "មិនបានទទួលស្គាល់ទាន់ពេល",
    ),
    (
        "follow_up_missed",
        "follow-up visit missed",
        "ខកខានការចុះតាមដាន",
    ),
];

/// Every word the pages show. One field per phrase; a `{}` in a phrase is never used: phrases
/// that carry a value are built by the page around them, so word order stays each language's.
pub struct Text {
    pub lang_name: &'static str,
    pub app: &'static str,
    pub skip_to_content: &'static str,
    pub nav_inbox: &'static str,
    pub nav_send: &'static str,
    pub nav_sent: &'static str,
    pub nav_network: &'static str,
    pub nav_figures: &'static str,
    pub language: &'static str,
    pub switch_language: &'static str,
    pub signed_in_as: &'static str,
    pub log_out: &'static str,
    // Login.
    pub log_in_title: &'static str,
    pub username: &'static str,
    pub password: &'static str,
    pub log_in: &'static str,
    pub wrong_credentials: &'static str,
    pub locked_out_until: &'static str,
    pub form_expired: &'static str,
    // The inbox.
    pub inbox_title: &'static str,
    pub waiting_for_you: &'static str,
    pub nothing_waiting: &'static str,
    pub everything_else: &'static str,
    pub nothing_else: &'static str,
    pub to_acknowledge: &'static str,
    pub to_accept_or_decline: &'static str,
    pub to_follow_up_or_complete: &'static str,
    pub escalates_in: &'static str,
    pub deadline_passed: &'static str,
    pub escalated_times: &'static str,
    pub visit_due: &'static str,
    pub visit_overdue: &'static str,
    pub visits_missed: &'static str,
    pub broadcast_to_answer: &'static str,
    pub deadline_unknown: &'static str,
    pub filter: &'static str,
    pub any: &'static str,
    pub include_closed: &'static str,
    pub apply: &'static str,
    // Columns and fields.
    pub col_referral: &'static str,
    pub col_name: &'static str,
    pub col_from: &'static str,
    pub col_to: &'static str,
    pub col_kind: &'static str,
    pub col_urgency: &'static str,
    pub col_state: &'static str,
    pub col_received: &'static str,
    pub col_updated: &'static str,
    pub col_next: &'static str,
    pub col_when: &'static str,
    pub col_what: &'static str,
    pub col_agency: &'static str,
    pub col_person: &'static str,
    pub col_note: &'static str,
    pub col_province: &'static str,
    pub col_reason: &'static str,
    pub col_since: &'static str,
    pub col_times: &'static str,
    pub col_escalated_to: &'static str,
    pub col_waiting_on: &'static str,
    // One referral.
    pub referral_title: &'static str,
    pub envelope: &'static str,
    pub sender: &'static str,
    pub recipient: &'static str,
    pub no_recipient_yet: &'static str,
    pub this_agency_is: &'static str,
    pub consent: &'static str,
    pub consent_given_by: &'static str,
    pub consent_exception: &'static str,
    pub consent_not_recorded: &'static str,
    pub case_file: &'static str,
    pub case_file_follow_up_part: &'static str,
    pub case_file_withdrawn: &'static str,
    pub case_file_not_shared: &'static str,
    pub name_km: &'static str,
    pub name_latin: &'static str,
    pub date_of_birth: &'static str,
    pub reason_for_referral: &'static str,
    pub guardians: &'static str,
    pub contact_phone: &'static str,
    pub address: &'static str,
    pub directions: &'static str,
    pub transport_needs: &'static str,
    pub notes: &'static str,
    pub timeline: &'static str,
    pub follow_up_schedule: &'static str,
    pub next_visit: &'static str,
    pub every: &'static str,
    pub delegated_to: &'static str,
    pub visits_done: &'static str,
    pub no_visit_scheduled: &'static str,
    pub actions: &'static str,
    pub no_actions: &'static str,
    pub candidates: &'static str,
    pub done_sent: &'static str,
    pub done_queued: &'static str,
    pub not_found: &'static str,
    // Action names and their fields.
    pub act_acknowledge: &'static str,
    pub act_accept: &'static str,
    pub act_decline: &'static str,
    pub act_redirect: &'static str,
    pub act_in_progress: &'static str,
    pub act_follow_up: &'static str,
    pub act_complete: &'static str,
    pub act_fail: &'static str,
    pub act_withdraw: &'static str,
    pub act_entered_in_error: &'static str,
    pub act_delegate: &'static str,
    pub act_revoke_delegation: &'static str,
    pub act_withdraw_consent: &'static str,
    pub consent_for: &'static str,
    pub field_note: &'static str,
    pub field_planned_action: &'static str,
    pub field_date: &'static str,
    pub field_reason_code: &'static str,
    pub field_reason: &'static str,
    pub field_to_agency: &'static str,
    pub field_activity: &'static str,
    pub field_outcome: &'static str,
    pub field_summary: &'static str,
    // Sending.
    pub send_title: &'static str,
    pub send_to: &'static str,
    pub send_to_agency: &'static str,
    pub send_to_service: &'static str,
    pub agency: &'static str,
    pub service: &'static str,
    pub province: &'static str,
    pub subject: &'static str,
    pub sex: &'static str,
    pub age_band: &'static str,
    pub subject_province: &'static str,
    pub consent_by_client: &'static str,
    pub consent_by_guardian: &'static str,
    pub consent_date: &'static str,
    pub emergency_exception: &'static str,
    pub send: &'static str,
    pub choose: &'static str,
    pub directory_offline: &'static str,
    // What was sent, and the outbox.
    pub sent_title: &'static str,
    pub nothing_sent: &'static str,
    pub outbox_title: &'static str,
    pub outbox_empty: &'static str,
    pub outbox_waiting: &'static str,
    pub outbox_rejected: &'static str,
    pub broker_link_up: &'static str,
    pub broker_link_down: &'static str,
    // Coordinators.
    pub overdue_title: &'static str,
    pub overdue_none: &'static str,
    pub overdue_count: &'static str,
    pub coordinators_only: &'static str,
    pub broker_needed: &'static str,
    pub timeline_title: &'static str,
    pub timeline_no_case_file: &'static str,
    pub figures_title: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub referrals: &'static str,
    pub time_to_acknowledge: &'static str,
    pub time_to_accept: &'static str,
    pub median: &'static str,
    pub p90: &'static str,
    pub by_agency: &'static str,
    pub by_province: &'static str,
    pub by_kind: &'static str,
    pub by_sex: &'static str,
    pub by_age_band: &'static str,
    pub all_referrals: &'static str,
    pub download_csv: &'static str,
    pub no_time: &'static str,
    pub within_deadline: &'static str,
    pub escalations: &'static str,
    pub missed_visits: &'static str,
    // Units.
    pub unit_days: &'static str,
    pub unit_hours: &'static str,
    pub unit_minutes: &'static str,
    pub ago: &'static str,
    pub error_title: &'static str,
}

pub const EN: Text = Text {
    lang_name: "English",
    app: "Spean",
    skip_to_content: "Skip to content",
    nav_inbox: "Inbox",
    nav_send: "Send a referral",
    nav_sent: "Sent",
    nav_network: "Overdue",
    nav_figures: "Figures",
    language: "Language",
    switch_language: "ភាសាខ្មែរ",
    signed_in_as: "Signed in as",
    log_out: "Log out",
    log_in_title: "Log in to Spean",
    username: "Username",
    password: "Password",
    log_in: "Log in",
    wrong_credentials: "Wrong username or password.",
    locked_out_until: "Too many wrong passwords. This account is locked until",
    form_expired: "This form has expired. Please try again.",
    inbox_title: "Inbox",
    waiting_for_you: "Waiting for you",
    nothing_waiting: "Nothing is waiting for you.",
    everything_else: "Everything else",
    nothing_else: "No other referrals.",
    to_acknowledge: "to acknowledge",
    to_accept_or_decline: "to accept or decline",
    to_follow_up_or_complete: "to follow up or complete",
    escalates_in: "escalated in",
    deadline_passed: "deadline passed",
    escalated_times: "escalated, times:",
    visit_due: "follow-up visit due",
    visit_overdue: "follow-up visit overdue",
    visits_missed: "visits missed:",
    broadcast_to_answer: "sent to several agencies: to answer",
    deadline_unknown: "deadline not known while offline",
    filter: "Filter",
    any: "Any",
    include_closed: "Include closed referrals",
    apply: "Apply",
    col_referral: "Referral",
    col_name: "Name",
    col_from: "From",
    col_to: "To",
    col_kind: "Kind",
    col_urgency: "Urgency",
    col_state: "State",
    col_received: "Received",
    col_updated: "Updated",
    col_next: "Who acts next",
    col_when: "When",
    col_what: "What",
    col_agency: "Agency",
    col_person: "Person",
    col_note: "Note",
    col_province: "Province",
    col_reason: "Reason",
    col_since: "Overdue since",
    col_times: "Times",
    col_escalated_to: "Escalated to",
    col_waiting_on: "Waiting on",
    referral_title: "Referral",
    envelope: "Referral",
    sender: "Sender",
    recipient: "Recipient",
    no_recipient_yet: "none yet (sent to several agencies)",
    this_agency_is: "This agency is",
    consent: "Consent",
    consent_given_by: "given by the",
    consent_exception: "none: emergency exception",
    consent_not_recorded: "not recorded",
    case_file: "Case file",
    case_file_follow_up_part: "The follow-up part of the case file, delegated here by",
    case_file_withdrawn: "The case file is no longer held here.",
    case_file_not_shared: "The case file is not shared with this agency.",
    name_km: "Name (Khmer)",
    name_latin: "Name (Latin letters)",
    date_of_birth: "Date of birth",
    reason_for_referral: "Reason for referral",
    guardians: "Guardians",
    contact_phone: "Phone",
    address: "Address",
    directions: "Directions",
    transport_needs: "Transport needs",
    notes: "Notes",
    timeline: "Timeline",
    follow_up_schedule: "Follow-up",
    next_visit: "Next visit",
    every: "every",
    delegated_to: "Visits delegated to",
    visits_done: "Visits made",
    no_visit_scheduled: "No visit scheduled.",
    actions: "What you can do",
    no_actions: "Nothing can be done on this referral in its state.",
    candidates: "Candidates",
    done_sent: "Recorded.",
    done_queued: "Saved here; it will be sent when the broker can be reached.",
    not_found: "No such referral here.",
    act_acknowledge: "Acknowledge",
    act_accept: "Accept",
    act_decline: "Decline",
    act_redirect: "Redirect",
    act_in_progress: "Mark in progress",
    act_follow_up: "Record a follow-up",
    act_complete: "Complete",
    act_fail: "Record failure",
    act_withdraw: "Withdraw",
    act_entered_in_error: "Mark entered in error",
    act_delegate: "Delegate the follow-up",
    act_revoke_delegation: "Take the follow-up back",
    act_withdraw_consent: "Record that consent was withdrawn",
    consent_for: "for",
    field_note: "Note",
    field_planned_action: "Planned action",
    field_date: "Date",
    field_reason_code: "Reason code",
    field_reason: "Reason",
    field_to_agency: "To agency",
    field_activity: "Activity",
    field_outcome: "Outcome",
    field_summary: "Summary",
    send_title: "Send a referral",
    send_to: "Send to",
    send_to_agency: "An agency",
    send_to_service: "A service in a province",
    agency: "Agency",
    service: "Service",
    province: "Province",
    subject: "About the person",
    sex: "Sex",
    age_band: "Age",
    subject_province: "Province where they live",
    consent_by_client: "The client consented",
    consent_by_guardian: "A guardian consented",
    consent_date: "Date consent was given",
    emergency_exception: "No consent: emergency exception (reason code)",
    send: "Send",
    choose: "Choose…",
    directory_offline: "The directory cannot be read while the broker is out of reach: type the codes.",
    sent_title: "What we sent",
    nothing_sent: "Nothing sent.",
    outbox_title: "Waiting to go out",
    outbox_empty: "Nothing is waiting to go out.",
    outbox_waiting: "waiting for the broker",
    outbox_rejected: "refused by the broker",
    broker_link_up: "Connected to the broker.",
    broker_link_down: "The broker cannot be reached: what you do is saved here and sent later.",
    overdue_title: "Overdue referrals",
    overdue_none: "Nothing is overdue.",
    overdue_count: "Overdue:",
    coordinators_only: "Only coordinators and provincial departments can see this page.",
    broker_needed: "This page asks the broker, which cannot be reached now.",
    timeline_title: "Timeline",
    timeline_no_case_file: "Coordinators see what happened and when; never the case file or notes.",
    figures_title: "Figures",
    from: "From",
    to: "To",
    referrals: "Referrals",
    time_to_acknowledge: "Time to acknowledgement",
    time_to_accept: "Time to acceptance",
    median: "median",
    p90: "90% within",
    by_agency: "By agency",
    by_province: "By province",
    by_kind: "By kind",
    by_sex: "By sex",
    by_age_band: "By age",
    all_referrals: "All referrals",
    download_csv: "Download CSV",
    no_time: "–",
    within_deadline: "Acknowledged within the deadline",
    escalations: "Escalations",
    missed_visits: "Follow-up visits missed",
    unit_days: "d",
    unit_hours: "h",
    unit_minutes: "min",
    ago: "ago",
    error_title: "Something went wrong",
};

pub const KM: Text = Text {
    lang_name: "ភាសាខ្មែរ",
    app: "ស្ពាន",
    skip_to_content: "រំលងទៅខ្លឹមសារ",
    nav_inbox: "ប្រអប់ទទួល",
    nav_send: "ផ្ញើការបញ្ជូន",
    nav_sent: "បានផ្ញើ",
    nav_network: "ហួសកំណត់",
    nav_figures: "តួលេខ",
    language: "ភាសា",
    switch_language: "English",
    signed_in_as: "បានចូលជា",
    log_out: "ចាកចេញ",
    log_in_title: "ចូលប្រើស្ពាន",
    username: "ឈ្មោះអ្នកប្រើ",
    password: "ពាក្យសម្ងាត់",
    log_in: "ចូល",
    wrong_credentials: "ឈ្មោះអ្នកប្រើ ឬពាក្យសម្ងាត់មិនត្រឹមត្រូវ។",
    locked_out_until: "ពាក្យសម្ងាត់ខុសច្រើនដងពេក។ គណនីនេះត្រូវបានចាក់សោរហូតដល់",
    form_expired: "ទម្រង់នេះផុតសុពលភាពហើយ។ សូមព្យាយាមម្ដងទៀត។",
    inbox_title: "ប្រអប់ទទួល",
    waiting_for_you: "កំពុងរង់ចាំអ្នក",
    nothing_waiting: "គ្មានអ្វីកំពុងរង់ចាំអ្នកទេ។",
    everything_else: "ផ្សេងៗទៀត",
    nothing_else: "គ្មានការបញ្ជូនផ្សេងទៀតទេ។",
    to_acknowledge: "ត្រូវទទួលស្គាល់",
    to_accept_or_decline: "ត្រូវទទួលយក ឬបដិសេធ",
    to_follow_up_or_complete: "ត្រូវតាមដាន ឬបញ្ចប់",
    escalates_in: "នឹងរាយការណ៍ទៅថ្នាក់លើក្នុងរយៈពេល",
    deadline_passed: "ហួសពេលកំណត់",
    escalated_times: "បានរាយការណ៍ទៅថ្នាក់លើ ចំនួនដង៖",
    visit_due: "ដល់ពេលចុះតាមដាន",
    visit_overdue: "ហួសពេលចុះតាមដាន",
    visits_missed: "ចំនួនដងខកខាន៖",
    broadcast_to_answer: "បានផ្ញើទៅស្ថាប័នច្រើន៖ ត្រូវឆ្លើយតប",
    deadline_unknown: "មិនដឹងពេលកំណត់ពេលគ្មានការតភ្ជាប់",
    filter: "ច្រោះ",
    any: "ទាំងអស់",
    include_closed: "រួមទាំងការបញ្ជូនដែលបានបិទ",
    apply: "អនុវត្ត",
    col_referral: "ការបញ្ជូន",
    col_name: "ឈ្មោះ",
    col_from: "ពី",
    col_to: "ទៅ",
    col_kind: "ប្រភេទ",
    col_urgency: "ភាពបន្ទាន់",
    col_state: "ស្ថានភាព",
    col_received: "បានទទួល",
    col_updated: "បានធ្វើបច្ចុប្បន្នភាព",
    col_next: "អ្នកត្រូវធ្វើបន្ទាប់",
    col_when: "ពេលវេលា",
    col_what: "អ្វី",
    col_agency: "ស្ថាប័ន",
    col_person: "បុគ្គល",
    col_note: "កំណត់ចំណាំ",
    col_province: "ខេត្ត",
    col_reason: "មូលហេតុ",
    col_since: "ហួសកំណត់តាំងពី",
    col_times: "ចំនួនដង",
    col_escalated_to: "បានរាយការណ៍ទៅ",
    col_waiting_on: "កំពុងរង់ចាំ",
    referral_title: "ការបញ្ជូន",
    envelope: "ការបញ្ជូន",
    sender: "អ្នកផ្ញើ",
    recipient: "អ្នកទទួល",
    no_recipient_yet: "មិនទាន់មាន (បានផ្ញើទៅស្ថាប័នច្រើន)",
    this_agency_is: "ស្ថាប័ននេះជា",
    consent: "ការយល់ព្រម",
    consent_given_by: "ផ្ដល់ដោយ",
    consent_exception: "គ្មាន៖ ករណីលើកលែងបន្ទាន់",
    consent_not_recorded: "មិនបានកត់ត្រា",
    case_file: "សំណុំរឿង",
    case_file_follow_up_part: "ផ្នែកតាមដាននៃសំណុំរឿង ដែលបានប្រគល់មកដោយ",
    case_file_withdrawn: "សំណុំរឿងនេះលែងរក្សាទុកនៅទីនេះហើយ។",
    case_file_not_shared: "សំណុំរឿងមិនបានចែករំលែកជាមួយស្ថាប័ននេះទេ។",
    name_km: "ឈ្មោះ (ខ្មែរ)",
    name_latin: "ឈ្មោះ (អក្សរឡាតាំង)",
    date_of_birth: "ថ្ងៃខែឆ្នាំកំណើត",
    reason_for_referral: "មូលហេតុនៃការបញ្ជូន",
    guardians: "អាណាព្យាបាល",
    contact_phone: "ទូរស័ព្ទ",
    address: "អាសយដ្ឋាន",
    directions: "ផ្លូវទៅ",
    transport_needs: "តម្រូវការដឹកជញ្ជូន",
    notes: "កំណត់ចំណាំ",
    timeline: "ប្រវត្តិ",
    follow_up_schedule: "ការតាមដាន",
    next_visit: "ការចុះតាមដានបន្ទាប់",
    every: "រៀងរាល់",
    delegated_to: "ការចុះតាមដានប្រគល់ឱ្យ",
    visits_done: "ការចុះតាមដានដែលបានធ្វើ",
    no_visit_scheduled: "មិនមានកាលវិភាគចុះតាមដានទេ។",
    actions: "អ្វីដែលអ្នកអាចធ្វើបាន",
    no_actions: "មិនអាចធ្វើអ្វីលើការបញ្ជូននេះក្នុងស្ថានភាពនេះបានទេ។",
    candidates: "ស្ថាប័នបេក្ខភាព",
    done_sent: "បានកត់ត្រា។",
    done_queued: "បានរក្សាទុកនៅទីនេះ ហើយនឹងផ្ញើនៅពេលអាចតភ្ជាប់ទៅម៉ាស៊ីនមេបាន។",
    not_found: "មិនមានការបញ្ជូននេះនៅទីនេះទេ។",
    act_acknowledge: "ទទួលស្គាល់",
    act_accept: "ទទួលយក",
    act_decline: "បដិសេធ",
    act_redirect: "បញ្ជូនបន្ត",
    act_in_progress: "កំណត់ថាកំពុងអនុវត្ត",
    act_follow_up: "កត់ត្រាការតាមដាន",
    act_complete: "បញ្ចប់",
    act_fail: "កត់ត្រាថាមិនបានសម្រេច",
    act_withdraw: "ដកវិញ",
    act_entered_in_error: "កំណត់ថាបញ្ចូលដោយច្រឡំ",
    act_delegate: "ប្រគល់ការតាមដាន",
    act_revoke_delegation: "ដកការតាមដានវិញ",
    act_withdraw_consent: "កត់ត្រាថាការយល់ព្រមត្រូវបានដកវិញ",
    consent_for: "សម្រាប់",
    field_note: "កំណត់ចំណាំ",
    field_planned_action: "សកម្មភាពគ្រោងធ្វើ",
    field_date: "កាលបរិច្ឆេទ",
    field_reason_code: "កូដមូលហេតុ",
    field_reason: "មូលហេតុ",
    field_to_agency: "ទៅស្ថាប័ន",
    field_activity: "សកម្មភាព",
    field_outcome: "លទ្ធផល",
    field_summary: "សេចក្ដីសង្ខេប",
    send_title: "ផ្ញើការបញ្ជូន",
    send_to: "ផ្ញើទៅ",
    send_to_agency: "ស្ថាប័នមួយ",
    send_to_service: "សេវាមួយក្នុងខេត្តមួយ",
    agency: "ស្ថាប័ន",
    service: "សេវា",
    province: "ខេត្ត",
    subject: "អំពីបុគ្គល",
    sex: "ភេទ",
    age_band: "អាយុ",
    subject_province: "ខេត្តដែលគាត់រស់នៅ",
    consent_by_client: "អតិថិជនបានយល់ព្រម",
    consent_by_guardian: "អាណាព្យាបាលបានយល់ព្រម",
    consent_date: "កាលបរិច្ឆេទនៃការយល់ព្រម",
    emergency_exception: "គ្មានការយល់ព្រម៖ ករណីលើកលែងបន្ទាន់ (កូដមូលហេតុ)",
    send: "ផ្ញើ",
    choose: "ជ្រើសរើស…",
    directory_offline: "មិនអាចអានបញ្ជីស្ថាប័នបានទេ ពេលម៉ាស៊ីនមេមិនអាចតភ្ជាប់បាន៖ សូមវាយកូដ។",
    sent_title: "អ្វីដែលយើងបានផ្ញើ",
    nothing_sent: "មិនទាន់បានផ្ញើអ្វីទេ។",
    outbox_title: "កំពុងរង់ចាំផ្ញើចេញ",
    outbox_empty: "គ្មានអ្វីកំពុងរង់ចាំផ្ញើចេញទេ។",
    outbox_waiting: "កំពុងរង់ចាំម៉ាស៊ីនមេ",
    outbox_rejected: "ម៉ាស៊ីនមេបានបដិសេធ",
    broker_link_up: "បានតភ្ជាប់ទៅម៉ាស៊ីនមេ។",
    broker_link_down: "មិនអាចតភ្ជាប់ទៅម៉ាស៊ីនមេបានទេ៖ អ្វីដែលអ្នកធ្វើត្រូវបានរក្សាទុកនៅទីនេះ ហើយនឹងផ្ញើពេលក្រោយ។",
    overdue_title: "ការបញ្ជូនហួសកំណត់",
    overdue_none: "គ្មានអ្វីហួសកំណត់ទេ។",
    overdue_count: "ហួសកំណត់៖",
    coordinators_only: "មានតែអ្នកសម្របសម្រួល និងមន្ទីរខេត្តប៉ុណ្ណោះដែលអាចមើលទំព័រនេះបាន។",
    broker_needed: "ទំព័រនេះត្រូវការម៉ាស៊ីនមេ ដែលមិនអាចតភ្ជាប់បាននៅពេលនេះ។",
    timeline_title: "ប្រវត្តិ",
    timeline_no_case_file: "អ្នកសម្របសម្រួលឃើញអ្វីដែលបានកើតឡើង និងពេលណា តែមិនឃើញសំណុំរឿង ឬកំណត់ចំណាំទេ។",
    figures_title: "តួលេខ",
    from: "ពី",
    to: "ដល់",
    referrals: "ការបញ្ជូន",
    time_to_acknowledge: "រយៈពេលរហូតដល់ការទទួលស្គាល់",
    time_to_accept: "រយៈពេលរហូតដល់ការទទួលយក",
    median: "មធ្យម",
    p90: "៩០% ក្នុងរយៈពេល",
    by_agency: "តាមស្ថាប័ន",
    by_province: "តាមខេត្ត",
    by_kind: "តាមប្រភេទ",
    by_sex: "តាមភេទ",
    by_age_band: "តាមអាយុ",
    all_referrals: "ការបញ្ជូនទាំងអស់",
    download_csv: "ទាញយក CSV",
    no_time: "–",
    within_deadline: "បានទទួលស្គាល់ក្នុងពេលកំណត់",
    escalations: "ការរាយការណ៍ទៅថ្នាក់លើ",
    missed_visits: "ការចុះតាមដានដែលខកខាន",
    unit_days: "ថ្ងៃ",
    unit_hours: "ម៉ោង",
    unit_minutes: "នាទី",
    ago: "មុន",
    error_title: "មានបញ្ហាកើតឡើង",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn khmer_numbers_use_khmer_digits_and_english_ones_group_thousands() {
        assert_eq!(Lang::Km.number(1_234_567), "១,២៣៤,៥៦៧");
        assert_eq!(Lang::En.number(1_234_567), "1,234,567");
        assert_eq!(Lang::En.number(42), "42");
        assert_eq!(Lang::En.count(42, 17), "42 (17 F)");
        assert_eq!(Lang::Km.count(42, 17), "៤២ (ស្រី ១៧)");
    }

    #[test]
    fn times_are_shown_in_cambodia_whatever_the_stored_offset() {
        let at = time::macros::datetime!(2026-12-04 23:30 UTC);
        assert_eq!(Lang::En.datetime(at), "5 Dec 2026, 06:30");
        assert_eq!(Lang::Km.datetime(at), "៥ ធ្នូ ២០២៦ ម៉ោង ០៦:៣០");
        assert_eq!(
            Lang::En.stored_time("2026-12-04T23:30:00Z"),
            "5 Dec 2026, 06:30"
        );
        assert_eq!(Lang::Km.day("2026-01-09"), "៩ មករា ២០២៦");
        assert_eq!(Lang::En.stored_time("not a time"), "not a time");
    }

    #[test]
    fn durations_keep_their_two_largest_units() {
        assert_eq!(Lang::En.duration(2 * 86_400 + 3 * 3_600 + 59), "2 d 3 h");
        assert_eq!(Lang::En.duration(45 * 60), "45 min");
        assert_eq!(Lang::En.duration(86_400 + 5 * 60), "1 d");
        assert_eq!(Lang::En.duration(10), "0 min");
        assert_eq!(Lang::Km.duration(3 * 3_600 + 5 * 60), "៣ ម៉ោង ៥ នាទី");
    }

    #[test]
    fn a_browser_gets_the_first_language_it_names_that_the_pages_have() {
        assert_eq!(
            Lang::from_accept_language(Some("fr-FR,en-GB;q=0.8,km;q=0.5")),
            Lang::En
        );
        assert_eq!(Lang::from_accept_language(Some("km-KH")), Lang::Km);
        assert_eq!(Lang::from_accept_language(None), Lang::Km);
    }

    #[test]
    fn codes_read_in_each_language_and_unknown_ones_stay_readable() {
        assert_eq!(Lang::Km.code_label("acknowledged"), "បានទទួលស្គាល់");
        assert_eq!(Lang::En.code_label("in_progress"), "in progress");
        assert_eq!(Lang::En.code_label("a_new_kind"), "a new kind");
    }
}
