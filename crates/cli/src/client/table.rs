//! Tables in the linstor client's style: UTF-8 box drawing (`╭─╮ ┊ ╞═╡ ╰─╯`) by
//! default, ASCII (`+-+ | |=|`) with `--no-utf8`. Cells may hold several lines.

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self, utf8: bool) -> String {
        let (tl, tr, bl, br, h, v, sl, sr, sh) = if utf8 {
            ('╭', '╮', '╰', '╯', '─', '┊', '╞', '╡', '═')
        } else {
            ('+', '+', '+', '+', '-', '|', '|', '|', '=')
        };
        let width = |s: &str| s.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        let mut widths: Vec<usize> = self.headers.iter().map(|c| width(c)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        // "┊ a ┊ b ┊": each column plus " ┊ " between them.
        let inner = widths.iter().sum::<usize>() + 3 * widths.len().saturating_sub(1) + 2;
        let rule = |l: char, fill: char, r: char| {
            let mut s = String::new();
            s.push(l);
            s.extend(std::iter::repeat_n(fill, inner));
            s.push(r);
            s.push('\n');
            s
        };
        let line = |cells: &[String], out: &mut String| {
            let height = cells
                .iter()
                .map(|c| c.lines().count().max(1))
                .max()
                .unwrap_or(1);
            for i in 0..height {
                out.push(v);
                for (c, w) in cells.iter().zip(&widths) {
                    let part = c.lines().nth(i).unwrap_or("");
                    let pad = w - part.chars().count();
                    out.push(' ');
                    out.push_str(part);
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push(' ');
                    out.push(v);
                }
                out.push('\n');
            }
        };
        let mut out = rule(tl, h, tr);
        line(&self.headers, &mut out);
        out.push_str(&rule(sl, sh, sr));
        for r in &self.rows {
            line(r, &mut out);
        }
        out.push_str(&rule(bl, h, br));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Table {
        let mut t = Table::new(&["Node", "NodeType", "Addresses", "State"]);
        t.row(vec![
            "dalia".into(),
            "SATELLITE".into(),
            "10.100.4.103:3366 (PLAIN)".into(),
            "Online".into(),
        ]);
        t.row(vec![
            "petunia".into(),
            "SATELLITE".into(),
            "10.100.4.102:3366 (PLAIN)".into(),
            "Online".into(),
        ]);
        t
    }

    /// The layout of `linstor node list` in ../shared/seeds/004 (UTF-8).
    #[test]
    fn utf8_matches_the_linstor_layout() {
        let want = "\
╭──────────────────────────────────────────────────────────╮
┊ Node    ┊ NodeType  ┊ Addresses                 ┊ State  ┊
╞══════════════════════════════════════════════════════════╡
┊ dalia   ┊ SATELLITE ┊ 10.100.4.103:3366 (PLAIN) ┊ Online ┊
┊ petunia ┊ SATELLITE ┊ 10.100.4.102:3366 (PLAIN) ┊ Online ┊
╰──────────────────────────────────────────────────────────╯
";
        assert_eq!(nodes().render(true), want);
    }

    #[test]
    fn ascii_and_multi_line_cells() {
        let mut t = Table::new(&["ResourceGroup", "SelectFilter"]);
        t.row(vec![
            "grp".into(),
            "PlaceCount: 2\nDisklessOnRemaining: True".into(),
        ]);
        t.row(vec!["x".into()]);
        let want = "\
+-------------------------------------------+
| ResourceGroup | SelectFilter              |
|===========================================|
| grp           | PlaceCount: 2             |
|               | DisklessOnRemaining: True |
| x             |                           |
+-------------------------------------------+
";
        assert_eq!(t.render(false), want);
    }

    #[test]
    fn an_empty_table_shows_its_header() {
        let t = Table::new(&["A"]);
        assert_eq!(t.render(false), "+---+\n| A |\n|===|\n+---+\n");
    }
}
