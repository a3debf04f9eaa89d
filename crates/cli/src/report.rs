//! A small document model (headings, paragraphs, lists, tables, figures, code) rendered to
//! Markdown and to one self-contained HTML file (SVG figures inlined: it opens from disk
//! with no server and no network).

use std::fmt::Write;
use std::path::Path;

pub enum Block {
    Heading(usize, String),
    /// Text; `code` spans are rendered as code.
    Para(String),
    List(Vec<String>),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// An SVG file relative to the report's folder, with a caption.
    Figure {
        path: String,
        caption: String,
    },
    Code(String),
}

#[derive(Default)]
pub struct Doc {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Doc {
    pub fn h(&mut self, level: usize, text: impl Into<String>) {
        self.blocks.push(Block::Heading(level, text.into()));
    }
    pub fn p(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Para(text.into()));
    }
    pub fn list(&mut self, items: Vec<String>) {
        self.blocks.push(Block::List(items));
    }
    pub fn table(&mut self, header: &[&str], rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table { header: header.iter().map(|s| s.to_string()).collect(), rows });
    }
    pub fn figure(&mut self, path: impl Into<String>, caption: impl Into<String>) {
        self.blocks.push(Block::Figure { path: path.into(), caption: caption.into() });
    }
    pub fn code(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Code(text.into()));
    }

    /// Every figure's path, relative to the report folder.
    pub fn figures(&self) -> Vec<&str> {
        self.blocks
            .iter()
            .filter_map(|b| match b {
                Block::Figure { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("# {}\n\n", self.title);
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => {
                    let _ = write!(s, "{} {t}\n\n", "#".repeat(l + 1));
                }
                Block::Para(t) => {
                    let _ = write!(s, "{t}\n\n");
                }
                Block::List(items) => {
                    for i in items {
                        let _ = writeln!(s, "- {i}");
                    }
                    s.push('\n');
                }
                Block::Table { header, rows } => {
                    let cell = |c: &str| c.replace('|', "\\|");
                    let _ = writeln!(s, "| {} |", header.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | "));
                    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
                    for r in rows {
                        let _ = writeln!(s, "| {} |", r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
                    }
                    s.push('\n');
                }
                Block::Figure { path, caption } => {
                    let _ = write!(s, "![{caption}]({path})\n\n*{caption}*\n\n");
                }
                Block::Code(t) => {
                    let _ = write!(s, "```sh\n{t}\n```\n\n");
                }
            }
        }
        s
    }

    /// One HTML file; figures are read from `dir` and inlined.
    pub fn html(&self, dir: &Path) -> anyhow::Result<String> {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body><main>\n<h1>{}</h1>\n",
            esc(&self.title),
            esc(&self.title)
        );
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => {
                    let _ = writeln!(s, "<h{0} id=\"{2}\">{1}</h{0}>", l + 1, esc(t), anchor(t));
                }
                Block::Para(t) => {
                    let _ = writeln!(s, "<p>{}</p>", inline(t));
                }
                Block::List(items) => {
                    s.push_str("<ul>");
                    for i in items {
                        let _ = write!(s, "<li>{}</li>", inline(i));
                    }
                    s.push_str("</ul>\n");
                }
                Block::Table { header, rows } => {
                    s.push_str("<div class=\"scroll\"><table><thead><tr>");
                    for h in header {
                        let _ = write!(s, "<th>{}</th>", esc(h));
                    }
                    s.push_str("</tr></thead><tbody>");
                    for r in rows {
                        s.push_str("<tr>");
                        for c in r {
                            let numeric =
                                c.trim_start_matches(['+', '-', '−']).starts_with(|ch: char| ch.is_ascii_digit());
                            let _ = write!(s, "<td{}>{}</td>", if numeric { " class=\"n\"" } else { "" }, inline(c));
                        }
                        s.push_str("</tr>");
                    }
                    s.push_str("</tbody></table></div>\n");
                }
                Block::Figure { path, caption } => {
                    let file = dir.join(path);
                    let svg = std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("report figure {}: {e}", file.display()))?;
                    let svg = svg.trim_start_matches(|c| c != '<');
                    let svg = match svg.strip_prefix("<?xml") {
                        Some(rest) => &rest[rest.find("?>").map_or(0, |i| i + 2)..],
                        None => svg,
                    };
                    let _ = writeln!(s, "<figure>{}<figcaption>{}</figcaption></figure>", svg.trim(), inline(caption));
                }
                Block::Code(t) => {
                    let _ = writeln!(s, "<pre><code>{}</code></pre>", esc(t));
                }
            }
        }
        s.push_str("</main></body></html>\n");
        Ok(s)
    }
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;background:#fafafa;margin:0}\
main{max-width:1000px;margin:0 auto;padding:24px 32px;background:#fff}\
h1{font-size:1.7em;border-bottom:2px solid #1f77b4;padding-bottom:6px}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}\
table{border-collapse:collapse;font-size:0.88em;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;white-space:nowrap}\
th{background:#f0f4f8;text-align:left;white-space:normal;vertical-align:bottom}td.n{text-align:right;font-variant-numeric:tabular-nums}tbody tr:nth-child(even){background:#fafcff}\
.scroll{overflow-x:auto}figure{margin:12px 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:0.9em}\
pre{background:#f5f5f5;padding:10px;overflow-x:auto;font-size:0.85em;border-radius:4px}code{background:#f2f2f2;padding:0 3px;border-radius:3px}pre code{background:none;padding:0}";

pub fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Escaped text with `code` spans and **bold** spans.
fn inline(t: &str) -> String {
    let mut out = String::new();
    for (i, part) in t.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            for (j, seg) in esc(part).split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<b>{seg}</b>");
                } else {
                    out.push_str(seg);
                }
            }
        }
    }
    out
}

fn anchor(t: &str) -> String {
    t.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_and_html_carry_every_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("f.svg"),
            "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n",
        )
        .unwrap();
        let mut d = Doc { title: "T <1>".into(), ..Default::default() };
        d.h(1, "Section");
        d.p("run `tern run` **now**");
        d.list(vec!["a".into(), "b".into()]);
        d.table(&["x", "y"], vec![vec!["1".into(), "a|b".into()]]);
        d.figure("f.svg", "cap");
        d.code("tern run --quick");
        let md = d.markdown();
        for needle in ["# T <1>", "## Section", "- a", "| x | y |", "a\\|b", "![cap](f.svg)", "```sh"] {
            assert!(md.contains(needle), "markdown lacks {needle}:\n{md}");
        }
        let html = d.html(dir.path()).unwrap();
        for needle in
            ["T &lt;1&gt;", "<h2", "<code>tern run</code>", "<b>now</b>", "<li>a</li>", "<svg", "cap", "<pre><code>"]
        {
            assert!(html.contains(needle), "html lacks {needle}");
        }
        assert!(!html.contains("<?xml"), "the XML declaration must not be inlined");
        d.figure("missing.svg", "x");
        assert!(d.html(dir.path()).unwrap_err().to_string().contains("missing.svg"));
    }
}
