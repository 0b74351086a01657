//! The option tables of `docs/configuration.md`, generated from the declaration. A test
//! (`tests.rs`: `docs_configuration_md_has_the_generated_tables`) fails when the file's tables
//! differ; `UPDATE_DOCS=1 cargo test -p fleet --lib config::` writes them.

use super::{keys, Config, Key, Origin};

/// The Markdown tables of every key: fleet v1's, then this project's.
pub fn docs_table() -> String {
    let defaults = Config::default();
    let mut out = String::new();
    for (origin, title) in [
        (Origin::FleetV1, "Keys of fleet v1"),
        (Origin::Fleet, "Keys of this project"),
    ] {
        out.push_str(&format!("## {title}\n\n"));
        out.push_str("| Key | Default | On SIGHUP | Meaning |\n");
        out.push_str("|-----|---------|-----------|---------|\n");
        for key in keys().filter(|k| k.origin() == origin) {
            let (default, reload, meaning) = match key {
                Key::Field(f) => {
                    let shown = defaults.show(f.name).unwrap_or_default();
                    let default = match f.meta.default_doc {
                        Some(text) => text.to_string(),
                        None if shown.is_empty() => "none".to_string(),
                        None => format!("`{shown}`"),
                    };
                    (default, f.meta.reload.describe(), f.text())
                }
                Key::Obsolete(o) => (
                    "—".to_string(),
                    "—",
                    format!("obsolete: accepted with a warning and ignored; {}.", o.why),
                ),
            };
            out.push_str(&format!(
                "| `{}` | {default} | {reload} | {} |\n",
                key.name(),
                meaning.replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    out
}
