//! Logging, set up once per process. Log lines carry ids, codes and states, never case-file content or
//! free text: the types that hold those do not print them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (stderr). `RUST_LOG` overrides the configured filter. Colours
/// only on a terminal: a log file or a journal gets plain text.
pub fn init(config: &LogConfig) {
    let ansi = std::io::stderr().is_terminal();
    let _ = match config.format {
        LogFormat::Json => builder(config, std::io::stderr).json().try_init(),
        LogFormat::Text => builder(config, std::io::stderr).with_ansi(ansi).try_init(),
    };
}

/// The subscriber's builder for `config`, writing to `writer`. With `span_timings`, every span
/// logs its busy and idle time when it closes: a slow answer that was idle waited for something
/// outside the broker's own work (the database, the disk), one that was busy did not.
fn builder<W>(
    config: &LogConfig,
    writer: W,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    EnvFilter,
    W,
>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.filter.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_span_events(if config.span_timings {
            FmtSpan::CLOSE
        } else {
            FmtSpan::NONE
        })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer, to read what the subscriber logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn logged(span_timings: bool) -> String {
        let config = LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
            span_timings,
        };
        let out = Captured::default();
        let subscriber = builder(&config, out.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("submit", client_ref = "c-1");
            span.in_scope(|| tracing::info!("referral submitted"));
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn span_timings_log_each_span_s_busy_and_idle_time_when_it_closes_and_only_then() {
        let with = logged(true);
        assert!(with.contains("referral submitted"), "{with}");
        let close = with
            .lines()
            .find(|l| l.contains("close"))
            .unwrap_or_else(|| panic!("no close line in {with}"));
        assert!(
            close.contains("submit{client_ref=\"c-1\"}")
                && close.contains("time.busy=")
                && close.contains("time.idle="),
            "{close}"
        );

        let without = logged(false);
        assert!(without.contains("referral submitted"), "{without}");
        assert!(!without.contains("time.busy"), "{without}");
    }
}
