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

    /// The rendered table, one `\n`-terminated line per row: the rows as fleet wrote them to its
    /// tabwriter (cells joined by tabs), laid out by [`tabwrite`].
    pub fn render(&self) -> String {
        let mut text = String::new();
        for row in &self.rows {
            text.push_str(&row.join("\t"));
            text.push('\n');
        }
        tabwrite(&text)
    }
}

/// Go's `text/tabwriter` as fleet used it (minwidth 0, tabwidth 8, padding 1, padchar `\t`, no flags),
/// over a whole text. A line is split into cells at tabs; only tab-terminated cells are aligned (a
/// line's last cell is not); a column's width is computed over each block of consecutive lines that
/// have a cell in it (so a cell holding a newline, as a `Description=` with a line continuation does,
/// ends the blocks of the columns after it, exactly as in fleet's output).
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut widths = Vec::new();
    format_block(&lines, 0, lines.len(), &mut widths, &mut out);
    out
}

/// Go's `(*Writer).format`: lays out lines `line0..line1`, whose columns left of `widths.len()` have
/// the given widths.
fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        // A cell in this column: the lines before it are done; a column block begins.
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = 0;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(text_width(lines[this][column]) + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

/// Go's `(*Writer).writeLines`: every cell, padded with tabs to its column's width when it has one;
/// a newline after every line but the text's last (unterminated) one.
fn write_lines(lines: &[Vec<&str>], from: usize, to: usize, widths: &[usize], out: &mut String) {
    for (i, line) in lines.iter().enumerate().take(to).skip(from) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(w) = widths.get(j) {
                let cell_width = w.div_ceil(TAB_WIDTH) * TAB_WIDTH;
                let gap = cell_width - text_width(cell);
                for _ in 0..gap.div_ceil(TAB_WIDTH) {
                    out.push('\t');
                }
            }
        }
        if i + 1 < lines.len() {
            out.push('\n');
        }
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
    fn a_cell_with_a_newline_ends_the_column_blocks_after_it_as_in_go() {
        let mut t = Table::new();
        t.header(&["unit", "desc", "global"]);
        t.row(vec![
            "a.service".into(),
            "one \\\n  two".into(),
            "false".into(),
        ]);
        t.row(vec![
            "b.service".into(),
            "Hello World".into(),
            "false".into(),
        ]);
        t.row(vec!["c.service".into(), "x".into(), "true".into()]);
        // Go's tabwriter, as fleet printed it: the DESC column of the header and `one \` is padded on
        // its own (its block ends at the line break), the two rows after it form a block of their own;
        // `  two` is in the first column, whose block spans every line.
        assert_eq!(
            t.render(),
            "UNIT\t\tDESC\tGLOBAL\n\
             a.service\tone \\\n  two\t\tfalse\n\
             b.service\tHello World\tfalse\n\
             c.service\tx\t\ttrue\n"
        );
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new();
        t.row(vec!["é".repeat(7), "x".into()]);
        t.row(vec!["a".into(), "y".into()]);
        assert_eq!(t.render(), format!("{}\tx\na\ty\n", "é".repeat(7)));
    }
}
