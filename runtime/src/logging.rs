//! A minimal stderr logger for the `log` facade: `SCANSIDE_LOG=debug` (or `error`, `warn`,
//! `info`, `trace`) shows the runtime's own records at that level, one line each,
//! `scanside: debug: …`. Unset (or `off`), nothing is logged, so stdout and stderr stay
//! exactly what the commands print.
//!
//! It never shows other crates' records (tract logs every optimisation pass at debug level)
//! and never decides what a command prints: results and errors are not log records.

use log::{LevelFilter, Log, Metadata, Record};

/// The environment variable naming the level.
pub const LEVEL_VARIABLE: &str = "SCANSIDE_LOG";

/// Writes scanside's records at or above its level to stderr.
struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("scanside")
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            eprintln!("scanside: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at the level [`LEVEL_VARIABLE`] names, if it names one; returns a
/// description of a value that is not a level (the caller warns), `Ok` otherwise. Call once,
/// at start-up; a second call leaves the first logger in place.
pub fn init_from_env() -> Result<(), String> {
    let Ok(value) = std::env::var(LEVEL_VARIABLE) else {
        return Ok(());
    };
    let level: LevelFilter = match value.trim() {
        "" => return Ok(()),
        text => text.parse().map_err(|_| {
            format!("{LEVEL_VARIABLE}={text:?} is not one of off, error, warn, info, debug, trace")
        })?,
    };
    init(level);
    Ok(())
}

/// Installs the logger at `level` (a `--verbose` flag's `Debug`); `Off` installs nothing. A
/// second call leaves the first logger in place.
pub fn init(level: LevelFilter) {
    if level == LevelFilter::Off {
        return;
    }
    // One logger for the life of the process: leaking it is what `log` expects.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scanside_records_at_or_above_the_level_are_shown() {
        let logger = StderrLogger {
            level: LevelFilter::Debug,
        };
        let at = |level, target| {
            logger.enabled(&Metadata::builder().level(level).target(target).build())
        };
        assert!(at(log::Level::Debug, "scanside_runtime::infer"));
        assert!(at(log::Level::Warn, "scanside_runtime"));
        assert!(!at(log::Level::Trace, "scanside_runtime::infer"));
        assert!(!at(log::Level::Debug, "tract_core::optim"));
    }
}
