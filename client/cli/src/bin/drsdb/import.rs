//! `drsdb import`: loads a CSV file into an existing table through the
//! driver's bulk loader ([`drsdb_client::Loader`]: rows grouped by shard,
//! batches sent in parallel, each committing on its own), with a progress
//! bar.
//!
//! A thread of its own reads the file (the `csv` crate: RFC 4180 quoting,
//! any one-byte delimiter) and hands records to the loader in chunks. Every
//! field is text, as SQLite's `.import` binds it: the column's affinity
//! converts it when it is written (the loader converts early only what is
//! certain, to know the row's shard). With `--null S`, fields equal to `S`
//! are NULL.
//!
//! Not implemented yet: SQL files (`drsdb -f FILE` runs them statement by
//! statement), and formats other than delimited text.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drsdb_client::{Client, LoadOptions, OnConflict, Value};

use crate::ConnectArgs;

/// Records per chunk handed from the reading thread to the loader.
const CHUNK_ROWS: usize = 1000;
/// Chunks read ahead of the loader.
const CHUNKS_AHEAD: usize = 16;
/// How often the progress bar is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Options of `drsdb import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The CSV file (`-` for standard input).
    file: PathBuf,
    /// The table to load; it must exist.
    #[arg(long)]
    table: String,
    #[command(flatten)]
    format: Format,
    /// Rows per INSERT.
    #[arg(long, default_value_t = drsdb_client::DEFAULT_BATCH)]
    batch: usize,
    /// INSERTs in flight at once.
    #[arg(long, default_value_t = drsdb_client::DEFAULT_PARALLEL)]
    parallel: usize,
    /// What a row whose key is already in the table does: `abort` stops the
    /// import, `ignore` skips the row (so importing a file again adds only
    /// what is missing), `replace` overwrites the row.
    #[arg(long, value_enum, default_value_t = Conflict::Abort)]
    on_conflict: Conflict,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// How the file is written.
#[derive(clap::Args, Clone, Debug)]
pub struct Format {
    /// The first record names the columns the values are for.
    #[arg(long)]
    pub header: bool,
    /// The columns the values are for, in order, comma-separated (default:
    /// the header's names with --header, otherwise all of the table's
    /// columns in order).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// The field delimiter: one character, or `\t` for tabs.
    #[arg(long, default_value = ",")]
    pub delimiter: String,
    /// Fields equal to this are NULL (by default every field is text, and
    /// an empty field is the empty string).
    #[arg(long)]
    pub null: Option<String>,
}

impl Format {
    /// Comma-separated, header first, no NULL marker.
    pub fn csv_with_header() -> Format {
        Format { header: true, columns: Vec::new(), delimiter: ",".into(), null: None }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Conflict {
    Abort,
    Ignore,
    Replace,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut client = args.connect.client().await?;
        let options = LoadOptions {
            batch: args.batch,
            parallel: args.parallel,
            on_conflict: match args.on_conflict {
                Conflict::Abort => OnConflict::Abort,
                Conflict::Ignore => OnConflict::Ignore,
                Conflict::Replace => OnConflict::Replace,
            },
        };
        let started = Instant::now();
        let rows = import(&mut client, &args.file, &args.table, &args.format, options, !args.quiet).await?;
        let took = started.elapsed().as_secs_f64();
        println!(
            "{rows} rows imported into {} in {took:.1} s ({:.0} rows/s)",
            args.table,
            rows as f64 / took.max(1e-9)
        );
        anyhow::Ok(())
    })
}

/// Loads `file` into `table`; returns the rows loaded.
pub async fn import(
    client: &mut Client,
    file: &Path,
    table: &str,
    format: &Format,
    options: LoadOptions,
    progress: bool,
) -> anyhow::Result<u64> {
    let delimiter = match format.delimiter.as_str() {
        "\\t" | "\t" => b'\t',
        d if d.len() == 1 => d.as_bytes()[0],
        d => anyhow::bail!("the delimiter must be one character (or \\t), not {d:?}"),
    };
    let (input, size): (Box<dyn Read + Send>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(format.header).delimiter(delimiter).from_reader(input);
    let columns = match (&format.columns[..], format.header) {
        ([], true) => reader.headers()?.iter().map(str::to_string).collect(),
        (columns, _) => columns.to_vec(),
    };
    let mut loader = client.loader(table, &columns, options).await?;
    let width = loader.columns().len();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<(Vec<Vec<Value>>, u64)>>(CHUNKS_AHEAD);
    let null = format.null.clone();
    std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        let mut record = csv::StringRecord::new();
        loop {
            let more = match reader.read_record(&mut record) {
                Ok(more) => more,
                Err(e) => {
                    let _ = tx.blocking_send(Err(anyhow::anyhow!("{}", describe(&e))));
                    return;
                }
            };
            if more {
                if record.len() != width {
                    let line = record.position().map(|p| p.line()).unwrap_or_default();
                    let _ = tx.blocking_send(Err(anyhow::anyhow!(
                        "line {line}: {} fields for {width} columns; name the columns a record fills with --columns",
                        record.len()
                    )));
                    return;
                }
                chunk.push(
                    record
                        .iter()
                        .map(|f| match &null {
                            Some(n) if n == f => Value::Null,
                            _ => Value::Text(f.to_string()),
                        })
                        .collect(),
                );
            }
            if chunk.len() == CHUNK_ROWS || (!more && !chunk.is_empty()) {
                let bytes = reader.position().byte();
                if tx.blocking_send(Ok((std::mem::take(&mut chunk), bytes))).is_err() {
                    return;
                }
            }
            if !more {
                return;
            }
        }
    });

    let bar = progress.then(|| progress_bar(size));
    let committed = loader.progress();
    let mut drawn = Instant::now();
    let mut failure = None;
    while let Some(chunk) = rx.recv().await {
        let (rows, bytes) = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        for row in rows {
            if let Err(e) = loader.push(row).await {
                failure = Some(e.into());
                break;
            }
        }
        if failure.is_some() {
            break;
        }
        if let Some(bar) = bar.as_ref().filter(|_| drawn.elapsed() >= PROGRESS_EVERY) {
            bar.set_position(bytes);
            bar.set_message(format!("{} rows committed", committed.load(Ordering::Relaxed)));
            drawn = Instant::now();
        }
    }
    // The reading thread ends at its next chunk.
    drop(rx);
    let loaded = loader.finish().await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match (failure, loaded) {
        (None, Ok(rows)) => Ok(rows),
        (_, Err(e)) => Err(e.into()),
        (Some(e), Ok(rows)) => Err(e.context(format!(
            "the import stopped; the {rows} rows sent before it are in the table (each batch commits on its own): \
             fix the file and import the rest, or everything again with --on-conflict ignore"
        ))),
    }
}

/// A CSV error with the line it is on.
fn describe(e: &csv::Error) -> String {
    match e.position() {
        Some(p) => format!("line {}: {e}", p.line()),
        None => e.to_string(),
    }
}

/// A bar over the file's bytes, or a spinner for a stream of unknown size.
fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    let (bar, template) = match size {
        Some(n) => (indicatif::ProgressBar::new(n), "{bar:40} {percent:>3}% {bytes}/{total_bytes} {elapsed} {msg}"),
        None => (indicatif::ProgressBar::new_spinner(), "{spinner} {bytes} {elapsed} {msg}"),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
