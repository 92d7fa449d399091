//! The processes' text logs, as tests and the benchmark read them back.

use std::path::Path;

/// `text` without terminal colour codes (`ESC [ … m`), which the binaries' logs may hold: a test
/// matching `event_id=…` or a benchmark quoting the log's end wants the plain text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last three lines of the log at `path` on one line, plain: enough to say why a process
/// failed in an error message or a report's table cell. Empty when there is no log.
pub fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    strip_ansi(&tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_removed_and_the_text_kept() {
        let line = "\u{1b}[2m2026-11-22\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m event received \u{1b}[3mevent_id\u{1b}[0m\u{1b}[2m=\u{1b}[0mabc";
        assert_eq!(
            strip_ansi(line),
            "2026-11-22  INFO event received event_id=abc"
        );
    }

    #[test]
    fn the_tail_is_the_last_three_lines_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("broker.log");
        std::fs::write(&log, "one\ntwo\n\u{1b}[31mthree\u{1b}[0m\nfour\n").unwrap();
        assert_eq!(tail(&log), "two | three | four");
        assert_eq!(tail(&dir.path().join("missing.log")), "");
    }
}
