//! Reading corpora: plain text, JSONL and TSV files (or folders of them),
//! streamed line by line so that a corpus larger than memory works.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One record of a corpus: a document for pre-training, or an
/// (input, target) pair for a text-to-text task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Pair { input: String, target: String },
    Text { text: String },
}

impl Record {
    pub fn text(t: impl Into<String>) -> Self {
        Record::Text { text: t.into() }
    }

    pub fn pair(input: impl Into<String>, target: impl Into<String>) -> Self {
        Record::Pair {
            input: input.into(),
            target: target.into(),
        }
    }
}

/// How documents are laid out in a plain text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Documents {
    /// One document a line.
    #[default]
    Line,
    /// Documents separated by blank lines; the lines of one are joined.
    BlankLine,
}

/// The format of a source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum Format {
    Text {
        #[serde(default)]
        documents: Documents,
    },
    /// One JSON object a line; a document's text is in `text_field`, or a
    /// pair's in `input_field` and `target_field`.
    Jsonl {
        #[serde(default)]
        text_field: Option<String>,
        #[serde(default)]
        input_field: Option<String>,
        #[serde(default)]
        target_field: Option<String>,
    },
    /// `input<TAB>target` a line.
    Tsv,
}

/// What to do with a line that is not valid UTF-8 (or too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadLine {
    /// Skip the line and count it in the report.
    #[default]
    Skip,
    /// Stop with an error naming the file and line.
    Fail,
}

/// A corpus on disk: a file or a folder of files, in one format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: PathBuf,
    #[serde(flatten)]
    pub format: Format,
}

impl Source {
    /// Guesses the format from the file extension (`.jsonl` with a `text`
    /// field, `.tsv`, anything else plain text, one document a line).
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("json") => Format::Jsonl {
                text_field: None,
                input_field: None,
                target_field: None,
            },
            Some("tsv") => Format::Tsv,
            _ => Format::Text {
                documents: Documents::Line,
            },
        };
        Self { path, format }
    }
}

/// What reading sources found, beside the records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    pub files: u64,
    pub lines: u64,
    pub bytes: u64,
    pub records: u64,
    pub bad_utf8_lines: u64,
    pub too_long_lines: u64,
    /// Lines with a NUL byte: a binary file, or text in UTF-16.
    #[serde(default)]
    pub nul_lines: u64,
    /// The first skipped line, as `file:line: problem`, to show the user.
    pub first_bad: Option<String>,
}

impl ReadStats {
    /// Lines left out while reading, in words: `""`, or `"; 3 lines skipped
    /// (first: corpus.txt:7: not valid UTF-8 …)"`.
    pub fn skipped_note(&self) -> String {
        let skipped = self.bad_utf8_lines + self.too_long_lines + self.nul_lines;
        if skipped == 0 {
            return String::new();
        }
        let noun = if skipped == 1 { "line" } else { "lines" };
        match &self.first_bad {
            Some(first) => format!("; {skipped} {noun} skipped (first: {first})"),
            None => format!("; {skipped} {noun} skipped"),
        }
    }
}

/// Options for reading.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub on_bad_line: OnBadLine,
    /// Lines longer than this many bytes are bad lines: they would make a
    /// single record bigger than any buffer should be.
    pub max_line_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            on_bad_line: OnBadLine::Skip,
            max_line_bytes: 1 << 20,
        }
    }
}

/// The files of a source: the file itself, or a folder's regular files
/// (recursively, in name order, hidden files skipped).
pub fn source_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for p in entries.into_iter().rev() {
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the folder holds no files",
            path.display()
        )));
    }
    Ok(out)
}

/// Streams the records of sources, one line at a time.
pub struct SourceReader {
    sources: Vec<(PathBuf, Format)>,
    next_source: usize,
    current: Option<OpenFile>,
    opts: ReadOptions,
    pub stats: ReadStats,
    buf: Vec<u8>,
}

struct OpenFile {
    path: PathBuf,
    format: Format,
    reader: BufReader<File>,
    line: u64,
    /// Lines of the blank-line-separated document being gathered.
    pending: String,
}

impl SourceReader {
    pub fn new(sources: &[Source], opts: ReadOptions) -> Result<Self> {
        let mut files = Vec::new();
        for s in sources {
            for f in source_files(&s.path)? {
                files.push((f, s.format.clone()));
            }
        }
        Ok(Self {
            sources: files,
            next_source: 0,
            current: None,
            opts,
            stats: ReadStats::default(),
            buf: Vec::new(),
        })
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some((path, format)) = self.sources.get(self.next_source).cloned() else {
            return Ok(false);
        };
        self.next_source += 1;
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        self.stats.files += 1;
        self.current = Some(OpenFile {
            path,
            format,
            reader: BufReader::with_capacity(1 << 16, file),
            line: 0,
            pending: String::new(),
        });
        Ok(true)
    }

    fn bad_line(&mut self, path: &Path, line: u64, problem: &str) -> Result<()> {
        match self.opts.on_bad_line {
            OnBadLine::Fail => Err(Error::data(path, Some(line), problem)),
            OnBadLine::Skip => {
                if self.stats.first_bad.is_none() {
                    self.stats.first_bad = Some(format!("{}:{line}: {problem}", path.display()));
                }
                Ok(())
            }
        }
    }

    /// The next record, `None` at the end of the last file.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let cur = self.current.as_mut().expect("a file is open");
            self.buf.clear();
            // Read at most one byte past the limit, so a huge line never
            // sits in memory whole.
            let limit = self.opts.max_line_bytes as u64 + 1;
            let n = (&mut cur.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io(&cur.path, e))?;
            if n == 0 {
                // End of file: flush a last blank-line document.
                let cur = self.current.take().expect("a file is open");
                if !cur.pending.trim().is_empty() {
                    self.stats.records += 1;
                    return Ok(Some(Record::text(cur.pending)));
                }
                continue;
            }
            self.stats.bytes += n as u64;
            cur.line += 1;
            self.stats.lines += 1;
            let (path, line) = (cur.path.clone(), cur.line);
            if self.buf.len() as u64 >= limit && self.buf.last() != Some(&b'\n') {
                // Skip the rest of the over-long line.
                let cur = self.current.as_mut().expect("a file is open");
                let mut sink = Vec::new();
                loop {
                    sink.clear();
                    let m = (&mut cur.reader)
                        .take(1 << 16)
                        .read_until(b'\n', &mut sink)
                        .map_err(|e| Error::io(&cur.path, e))?;
                    self.stats.bytes += m as u64;
                    if m == 0 || sink.last() == Some(&b'\n') {
                        break;
                    }
                }
                self.stats.too_long_lines += 1;
                let max = self.opts.max_line_bytes;
                let msg = format!(
                    "line longer than {max} bytes: a record is one line, shorter than that"
                );
                self.bad_line(&path, line, &msg)?;
                continue;
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t.trim_end_matches(['\n', '\r']).to_string(),
                Err(e) => {
                    self.stats.bad_utf8_lines += 1;
                    let msg = format!(
                        "not valid UTF-8 (at byte {} of the line); save the file as UTF-8",
                        e.valid_up_to() + 1
                    );
                    self.bad_line(&path, line, &msg)?;
                    continue;
                }
            };
            // UTF-8 allows NUL, but no text has one: it is a binary file,
            // or UTF-16 text read as UTF-8.
            if let Some(at) = text.find('\0') {
                self.stats.nul_lines += 1;
                let msg = format!(
                    "a NUL byte (at byte {} of the line): this is a binary file or UTF-16 text; save it as UTF-8 text",
                    at + 1
                );
                self.bad_line(&path, line, &msg)?;
                continue;
            }
            let cur = self.current.as_mut().expect("a file is open");
            let record = match &cur.format {
                Format::Text {
                    documents: Documents::Line,
                } => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    Record::text(text)
                }
                Format::Text {
                    documents: Documents::BlankLine,
                } => {
                    if text.trim().is_empty() {
                        if cur.pending.trim().is_empty() {
                            continue;
                        }
                        Record::text(std::mem::take(&mut cur.pending))
                    } else {
                        if !cur.pending.is_empty() {
                            cur.pending.push('\n');
                        }
                        cur.pending.push_str(&text);
                        continue;
                    }
                }
                Format::Tsv => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    let Some((input, target)) = text.split_once('\t') else {
                        return Err(Error::data(
                            &path,
                            Some(line),
                            "no tab: a TSV line must be `input<TAB>target`",
                        ));
                    };
                    Record::pair(input, target)
                }
                Format::Jsonl {
                    text_field,
                    input_field,
                    target_field,
                } => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    parse_json_line(
                        &text,
                        text_field.as_deref(),
                        input_field.as_deref(),
                        target_field.as_deref(),
                    )
                    .map_err(|m| Error::data(&path, Some(line), m))?
                }
            };
            self.stats.records += 1;
            return Ok(Some(record));
        }
    }
}

impl Iterator for SourceReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

fn parse_json_line(
    line: &str,
    text_field: Option<&str>,
    input_field: Option<&str>,
    target_field: Option<&str>,
) -> std::result::Result<Record, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = value
        .as_object()
        .ok_or("a JSONL line must be a JSON object")?;
    let field = |name: &str| -> std::result::Result<String, String> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("field `{name}` is not a string but {other}")),
            None => Err(format!(
                "no field `{name}` (fields here: {})",
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    };
    match (text_field, input_field, target_field) {
        (Some(t), _, _) => Ok(Record::text(field(t)?)),
        (None, Some(i), Some(t)) => Ok(Record::pair(field(i)?, field(t)?)),
        (None, None, None) => {
            if obj.contains_key("input") && obj.contains_key("target") {
                Ok(Record::pair(field("input")?, field("target")?))
            } else {
                Ok(Record::text(field("text")?))
            }
        }
        _ => Err("give both input_field and target_field, or text_field".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        path: &Path,
        format: Format,
        opts: ReadOptions,
    ) -> Result<(Vec<Record>, ReadStats)> {
        let mut r = SourceReader::new(
            &[Source {
                path: path.to_path_buf(),
                format,
            }],
            opts,
        )?;
        let recs = r.by_ref().collect::<Result<Vec<_>>>()?;
        Ok((recs, r.stats))
    }

    #[test]
    fn reads_each_format() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "one doc\n\nsecond\nline\n\n\nthird").unwrap();
        let (recs, _) = read_all(
            &txt,
            Format::Text {
                documents: Documents::Line,
            },
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(recs.len(), 4);
        let (recs, _) = read_all(
            &txt,
            Format::Text {
                documents: Documents::BlankLine,
            },
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(
            recs,
            vec![
                Record::text("one doc"),
                Record::text("second\nline"),
                Record::text("third")
            ]
        );

        let tsv = dir.path().join("p.tsv");
        std::fs::write(&tsv, "hello\tbonjour\r\ncat\tchat\tfelin\n").unwrap();
        let (recs, _) = read_all(&tsv, Format::Tsv, ReadOptions::default()).unwrap();
        assert_eq!(
            recs,
            vec![
                Record::pair("hello", "bonjour"),
                Record::pair("cat", "chat\tfelin")
            ]
        );

        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"a doc\"}\n{\"input\": \"q\", \"target\": \"a\"}\n",
        )
        .unwrap();
        let (recs, _) = read_all(
            &jsonl,
            Source::from_path(&jsonl).format,
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(recs, vec![Record::text("a doc"), Record::pair("q", "a")]);
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_or_fail_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        let mut bytes = b"fine\n".to_vec();
        bytes.extend_from_slice(b"bad \xff\xfe here\n");
        bytes.extend_from_slice(&vec![b'x'; 5000]);
        bytes.extend_from_slice(b"\nnul\0byte\nlast\n");
        std::fs::write(&p, &bytes).unwrap();
        let fmt = Format::Text {
            documents: Documents::Line,
        };
        let opts = ReadOptions {
            on_bad_line: OnBadLine::Skip,
            max_line_bytes: 1000,
        };
        let (recs, stats) = read_all(&p, fmt.clone(), opts).unwrap();
        assert_eq!(recs, vec![Record::text("fine"), Record::text("last")]);
        assert_eq!(stats.bad_utf8_lines, 1);
        assert_eq!(stats.too_long_lines, 1);
        assert_eq!(stats.nul_lines, 1);
        assert!(stats
            .first_bad
            .unwrap()
            .contains("bad.txt:2: not valid UTF-8"));

        let opts = ReadOptions {
            on_bad_line: OnBadLine::Fail,
            max_line_bytes: 1000,
        };
        let err = read_all(&p, fmt, opts).unwrap_err().to_string();
        assert!(err.contains("bad.txt:2") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn malformed_tsv_and_jsonl_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("p.tsv");
        std::fs::write(&tsv, "a\tb\nno tab here\n").unwrap();
        let err = read_all(&tsv, Format::Tsv, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.tsv:2: no tab"), "{err}");

        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{not json\n").unwrap();
        let err = read_all(
            &jsonl,
            Source::from_path(&jsonl).format,
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("d.jsonl:2: not valid JSON"), "{err}");

        let missing = dir.path().join("nope.txt");
        let err = read_all(
            &missing,
            Source::from_path(&missing).format,
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nope.txt"), "{err}");
    }

    #[test]
    fn folders_are_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "b\n").unwrap();
        std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), "c\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "h\n").unwrap();
        let (recs, stats) = read_all(
            dir.path(),
            Source::from_path("x.txt").format,
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(
            recs,
            vec![Record::text("a"), Record::text("b"), Record::text("c")]
        );
        assert_eq!(stats.files, 3);
    }
}
