//! Durations as the directory file writes them: `<integer><unit>`, the unit one of `s`, `m`, `h`,
//! `d` (`2h`, `30d`, `45s`). People edit this file; a bare number of seconds would be misread.

use std::time::Duration;

use crate::error::FieldError;

/// The longest duration the file may set. The broker adds deadlines to timestamps and multiplies
/// them by an escalation tier's `after_deadlines`; a bound keeps that arithmetic far from overflow
/// (which would panic), and no deadline or visit interval in a referral network is longer.
const LONGEST: Duration = Duration::from_secs(3650 * 86_400);

/// Each unit with its length in seconds, largest first so that [`format`] picks the largest exact one.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Whether a duration of zero means something (a grace period) or is a mistake (a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    Allowed,
    Refused,
}

/// Parses `raw` as a duration, naming `field` in the error.
pub(crate) fn parse(field: &str, raw: &str, zero: Zero) -> Result<Duration, FieldError> {
    let invalid = || {
        FieldError::new(
            field,
            format!("must be a duration like 2h, 30m or 45s, not {raw:?}"),
        )
    };
    let mut chars = raw.chars();
    let unit = chars.next_back().ok_or_else(invalid)?;
    let number = chars.as_str();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let (_, seconds_per_unit) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(invalid)?;
    let too_long = || {
        FieldError::new(
            field,
            format!("{raw:?} is longer than the longest allowed, 3650d"),
        )
    };
    let count: u64 = number.parse().map_err(|_| too_long())?;
    let seconds = count.checked_mul(*seconds_per_unit).ok_or_else(too_long)?;
    let duration = Duration::from_secs(seconds);
    if duration > LONGEST {
        return Err(too_long());
    }
    if zero == Zero::Refused && duration.is_zero() {
        return Err(FieldError::new(field, "must be longer than zero"));
    }
    Ok(duration)
}

/// Writes `duration` back in the file's syntax, in the largest unit that divides it exactly, so
/// that a stored directory reads like the imported one (`2h` stays `2h`). Sub-second parts cannot
/// come from [`parse`] and are dropped.
pub(super) fn format(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (unit, per) = UNITS
        .iter()
        .find(|(_, per)| seconds.is_multiple_of(*per))
        .copied()
        .unwrap_or(('s', 1));
    format!("{}{unit}", seconds / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_parses() {
        for (raw, seconds) in [("45s", 45), ("30m", 1_800), ("2h", 7_200), ("7d", 604_800)] {
            assert_eq!(
                parse("f", raw, Zero::Refused).unwrap(),
                Duration::from_secs(seconds),
                "{raw}"
            );
        }
    }

    #[test]
    fn what_is_not_a_duration_is_refused_naming_the_field() {
        for raw in [
            "", "h", "2", "2 h", "2H", "-2h", "+2h", "2.5h", "2w", "h2", "٣h",
        ] {
            let err = parse("acknowledgement_deadlines.urgent", raw, Zero::Allowed).unwrap_err();
            assert_eq!(err.field, "acknowledgement_deadlines.urgent", "{raw:?}");
            assert!(err.reason.contains("like 2h, 30m or 45s"), "{raw:?}: {err}");
        }
    }

    #[test]
    fn zero_is_refused_where_it_would_be_a_mistake() {
        assert!(parse("f", "0s", Zero::Refused).is_err());
        assert_eq!(parse("f", "0d", Zero::Allowed).unwrap(), Duration::ZERO);
    }

    #[test]
    fn a_duration_too_long_for_the_clock_is_refused() {
        assert!(parse("f", "3650d", Zero::Refused).is_ok());
        assert!(parse("f", "3651d", Zero::Refused).is_err());
        assert!(parse("f", "99999999999999999999999s", Zero::Refused).is_err());
        assert!(parse("f", "999999999999999999d", Zero::Refused).is_err());
    }

    #[test]
    fn formatting_uses_the_largest_exact_unit_and_parses_back() {
        for (raw, written) in [("120m", "2h"), ("72h", "3d"), ("90s", "90s"), ("0d", "0d")] {
            let d = parse("f", raw, Zero::Allowed).unwrap();
            assert_eq!(format(d), written);
            assert_eq!(parse("f", &format(d), Zero::Allowed).unwrap(), d);
        }
    }
}
