//! fleetctl's table output: byte-for-byte what fleet printed through Go's
//! `tabwriter.NewWriter(out, 0, 8, 1, '\t', 0)`.
//!
//! Cells are separated by tab characters, never spaces: every column is padded with tabs to the
//! smallest multiple of 8 that is at least one wider than its widest cell, and the last column is not
//! padded. In a terminal with 8-column tab stops this lines up as in fleet's documentation, and scripts
//! that split fleet's output on tabs or whitespace keep working.

/// Width in columns of a tab stop.
const TAB_WIDTH: usize = 8;
/// Minimum gap between the widest cell of a column and the next column.
const PADDING: usize = 1;

/// A table: an optional upper-cased header line and rows of cells, all of the same length.
#[derive(Debug, Default, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table; add the header (if any) with [`Table::header`] first.
    pub fn new() -> Self {
        Table::default()
    }

    /// Add the legend line: the field names, upper-cased (fleet: `strings.ToUpper`).
    pub fn header<S: AsRef<str>>(&mut self, fields: &[S]) {
        self.rows
            .push(fields.iter().map(|f| f.as_ref().to_uppercase()).collect());
    }

    /// Add one row of cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one `\n`-terminated line per row.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        // Widths of every column but the last (the trailing cell of a line is never padded).
        let mut widths = vec![0usize; columns.saturating_sub(1)];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(widths.len()) {
                widths[i] = widths[i].max(text_width(cell) + PADDING);
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i + 1 < row.len() {
                    let cell_width = widths[i].div_ceil(TAB_WIDTH) * TAB_WIDTH;
                    let gap = cell_width - text_width(cell);
                    for _ in 0..gap.div_ceil(TAB_WIDTH) {
                        out.push('\t');
                    }
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Display width of a cell, counted in characters like Go's tabwriter counts runes.
fn text_width(s: &str) -> usize {
    s.chars().count()
}

/// Render `text` as a terminal would with 8-column tab stops (for tests and docs).
pub fn expand_tabs(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let mut col = 0;
        for ch in line.chars() {
            if ch == '\t' {
                let next = (col / TAB_WIDTH + 1) * TAB_WIDTH;
                out.extend(std::iter::repeat_n(' ', next - col));
                col = next;
            } else {
                out.push(ch);
                col += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_with_tabs_to_the_next_tab_stop() {
        let mut t = Table::new();
        t.header(&["unit", "hash", "dstate", "state", "target"]);
        t.row(vec![
            "hello.service".into(),
            "e55c0ae".into(),
            "launched".into(),
            "launched".into(),
            "113f16a7.../10.0.0.1".into(),
        ]);
        let out = t.render();
        assert_eq!(
            out,
            "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
             hello.service\te55c0ae\tlaunched\tlaunched\t113f16a7.../10.0.0.1\n"
        );
        assert_eq!(
            expand_tabs(&out),
            "UNIT            HASH    DSTATE          STATE           TARGET\n\
             hello.service   e55c0ae launched        launched        113f16a7.../10.0.0.1\n"
        );
    }

    #[test]
    fn a_cell_exactly_one_short_of_a_tab_stop_still_gets_one_tab() {
        let mut t = Table::new();
        t.row(vec!["1234567".into(), "x".into()]);
        t.row(vec!["12345678".into(), "y".into()]);
        // widest is 8 + padding 1 = 9 → column is 16 wide.
        assert_eq!(t.render(), "1234567\t\tx\n12345678\ty\n");
    }

    #[test]
    fn a_single_column_has_no_tabs_and_an_empty_table_renders_nothing() {
        let mut t = Table::new();
        t.header(&["machine"]);
        t.row(vec!["abc...".into()]);
        assert_eq!(t.render(), "MACHINE\nabc...\n");
        assert_eq!(Table::new().render(), "");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new();
        t.row(vec!["é".repeat(7), "x".into()]);
        t.row(vec!["a".into(), "y".into()]);
        assert_eq!(t.render(), format!("{}\tx\na\ty\n", "é".repeat(7)));
    }
}
