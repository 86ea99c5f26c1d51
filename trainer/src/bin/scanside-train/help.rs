//! Help texts that name the library's default, for flags that are `Option`s: such a flag
//! overrides a `--config` file only when it is given, so clap cannot fill in (and show) a
//! default for it; the text shows the value the library takes when neither says otherwise.
//! The values come from the library; none is written here.

use std::fmt::Display;

use clap::ValueEnum;

/// `text [default: value]`, as clap writes a default.
pub fn with_default(text: &str, default: impl Display) -> String {
    format!("{text} [default: {default}]")
}

/// [`with_default`] of a value of a `--flag VALUE` enum, by its command-line name.
pub fn with_default_value<T: ValueEnum>(text: &str, default: T) -> String {
    let name = default
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    with_default(text, name)
}
