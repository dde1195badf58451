//! `data prepare`: sources through cleaning into one prepared JSONL file
//! (a record a line) with the per-rule report beside it. Training reads
//! the prepared file; the report is kept with it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::clean::{CleanOptions, CleanReport, Cleaner};
use super::source::{ReadStats, Record};
use crate::error::{Error, Result};

/// What preparing a corpus did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareReport {
    pub read: ReadStats,
    pub clean: CleanReport,
    pub seconds: f64,
    pub bytes_written: u64,
}

impl PrepareReport {
    /// Input megabytes per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.read.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// The report as aligned lines for the command line.
    pub fn render(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("files read".into(), self.read.files.to_string()),
            ("lines read".into(), self.read.lines.to_string()),
            (
                "skipped: invalid UTF-8".into(),
                self.read.bad_utf8_lines.to_string(),
            ),
            (
                "skipped: line too long".into(),
                self.read.too_long_lines.to_string(),
            ),
            ("skipped: NUL bytes".into(), self.read.nul_lines.to_string()),
        ];
        rows.extend(
            self.clean
                .lines()
                .into_iter()
                .map(|(k, v)| (k, v.to_string())),
        );
        rows.push((
            "throughput".into(),
            format!(
                "{:.1} MB in {:.1} s ({:.1} MB/s)",
                self.read.bytes as f64 / 1e6,
                self.seconds,
                self.mb_per_sec()
            ),
        ));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v:>12}\n"));
        }
        if let Some(first) = &self.read.first_bad {
            out.push_str(&format!("first skipped line: {first}\n"));
        }
        out
    }
}

/// The prepared file and its report in `dir`.
pub fn prepared_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("records.jsonl"), dir.join("report.json"))
}

/// Cleans `records` into `dir/records.jsonl` and writes `dir/report.json`.
/// Both are written under temporary names and renamed when whole. An empty
/// result is an error: there would be nothing to train on.
pub fn prepare(
    records: impl Iterator<Item = Result<Record>>,
    read_stats: impl FnOnce() -> ReadStats,
    clean: &CleanOptions,
    dir: &Path,
) -> Result<PrepareReport> {
    // A folder made here and left empty by a failure is removed again, so
    // that a bad corpus leaves nothing behind in the store's data cache.
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let undo_dir = || {
        if made_dir {
            // Only succeeds when empty: nothing of anyone else's goes.
            let _ = std::fs::remove_dir(dir);
        }
    };
    let (out_path, report_path) = prepared_paths(dir);
    let tmp = crate::fsutil::temp_path(&out_path);
    let start = Instant::now();
    let mut cleaner = Cleaner::new(clean.clone());
    let result = (|| -> Result<u64> {
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut bytes = 0u64;
        for rec in records {
            if let Some(clean) = cleaner.clean(rec?) {
                let line =
                    serde_json::to_string(&clean).map_err(|e| Error::Other(e.to_string()))?;
                w.write_all(line.as_bytes())
                    .and_then(|_| w.write_all(b"\n"))
                    .map_err(|e| Error::io(&out_path, e))?;
                bytes += line.len() as u64 + 1;
            }
        }
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&out_path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&out_path, e))?;
        Ok(bytes)
    })();
    let bytes_written = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            undo_dir();
            return Err(e);
        }
    };
    let report = PrepareReport {
        read: read_stats(),
        clean: cleaner.report,
        seconds: start.elapsed().as_secs_f64(),
        bytes_written,
    };
    if report.clean.records_out == 0 {
        let _ = std::fs::remove_file(&tmp);
        undo_dir();
        return Err(Error::Invalid(format!(
            "the corpus is empty after cleaning ({} records read, {} kept{}): nothing to train on",
            report.clean.records_in,
            report.clean.records_out,
            report.read.skipped_note()
        )));
    }
    std::fs::rename(&tmp, &out_path).map_err(|e| Error::io(&out_path, e))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
    crate::fsutil::write_atomic(&report_path, json.as_bytes())?;
    Ok(report)
}

/// Reads a prepared file's records in order (for tokenizer training and
/// checks; training uses the shuffled [`super::stream::RecordStream`]).
pub fn read_prepared(path: &Path) -> Result<impl Iterator<Item = Result<Record>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let path = path.to_path_buf();
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map(|l| !l.trim().is_empty()).unwrap_or(true))
        .map(move |(i, line)| {
            let line = line.map_err(|e| Error::io(&path, e))?;
            serde_json::from_str(&line).map_err(|e| {
                Error::Invalid(format!(
                    "{}:{}: not a prepared record ({e})",
                    path.display(),
                    i + 1
                ))
            })
        }))
}

/// The texts of a record (a document, or both sides of a pair).
pub fn record_texts(record: &Record) -> Vec<&str> {
    match record {
        Record::Text { text } => vec![text.as_str()],
        Record::Pair { input, target } => vec![input.as_str(), target.as_str()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_writes_records_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let recs = vec![
            Ok(Record::text("a  b")),
            Ok(Record::text("a b")),
            Ok(Record::text("c")),
        ];
        let report = prepare(
            recs.into_iter(),
            ReadStats::default,
            &CleanOptions::default(),
            dir.path(),
        )
        .unwrap();
        assert_eq!(report.clean.records_out, 2);
        let (records, report_path) = prepared_paths(dir.path());
        let back: Vec<Record> = read_prepared(&records)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(back, vec![Record::text("a b"), Record::text("c")]);
        assert!(report_path.exists());
        assert!(report.render().contains("dropped: exact duplicate"));
    }

    #[test]
    fn an_empty_corpus_is_an_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let recs = vec![Ok(Record::text("   "))];
        let err = prepare(
            recs.into_iter(),
            ReadStats::default,
            &CleanOptions::default(),
            dir.path(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(!prepared_paths(dir.path()).0.exists());
    }
}
