//! The deterministic cluster simulator. Comes with issue 6; nothing here yet.
