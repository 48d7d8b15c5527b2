//! The interactive shell and the `-e`/`-f` script runner.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use drsdb_client::{Client, Row, RowStream, Value};
use drsdb_common::sql;
use rustyline::error::ReadlineError;

use crate::ConnectArgs;

/// Rows aligned together; a longer result prints in blocks of this many.
const BLOCK_ROWS: usize = 1000;
/// History file name in the home directory.
const HISTORY_FILE: &str = ".drsdb_history";

const HELP: &str = "\
Statements end with ';' and may span lines. Ctrl-C cancels a running
statement (or clears the line); Ctrl-D quits.

  \\dt, .tables          list tables and views
  \\d NAME, .schema NAME show how a table, index or view was created
  \\timing               show how long each statement takes (toggle)
  \\help, .help          this text
  \\q, .quit             quit

Cluster introspection: SHOW NODES; SHOW GROUPS; SHOW INDEX SERVERS; SHOW TABLES;";

/// How results print.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Mode {
    /// Aligned columns with a header and a row count.
    Table,
    /// One line per row, values separated by `|`, no header.
    List,
}

/// Runs the shell: a script with `-e`/`-f`, otherwise interactive.
pub fn run(connect: &ConnectArgs, execute: Option<String>, file: Option<PathBuf>, mode: Mode) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut client = runtime.block_on(connect.client())?;
    let script = match (execute, file) {
        (Some(sql), _) => Some(sql),
        (None, Some(path)) => {
            Some(std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?)
        }
        (None, None) => None,
    };
    match script {
        Some(script) => runtime.block_on(run_script(&mut client, &script, mode)),
        None => interactive(&runtime, &mut client, mode),
    }
}

/// Runs every statement of `script`, printing results; stops at the first
/// error and returns it.
pub async fn run_script(client: &mut Client, script: &str, mode: Mode) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for statement in sql::split_script(script)? {
        run_statement(client, &statement, mode, &mut out).await?;
    }
    Ok(())
}

/// The interactive loop.
pub fn interactive(runtime: &tokio::runtime::Runtime, client: &mut Client, mode: Mode) -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(HISTORY_FILE));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("drsdb shell. Statements end with ';'. \\help for help, Ctrl-D to quit.");
    let mut timing = false;
    let mut buffer = String::new();
    loop {
        let prompt = match (buffer.is_empty(), client.in_transaction()) {
            (true, false) => "drsdb> ",
            (true, true) => "drsdb*> ",
            (false, _) => "   ...> ",
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && (trimmed.starts_with('\\') || trimmed.starts_with('.')) {
            let _ = editor.add_history_entry(trimmed);
            match meta_command(trimmed, &mut timing) {
                Meta::Quit => break,
                Meta::Done => {}
                Meta::Run(sql) => {
                    runtime.block_on(run_interruptible(client, &sql, mode, timing));
                }
            }
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !sql::is_complete(&buffer) {
            continue;
        }
        let _ = editor.add_history_entry(buffer.as_str());
        let text = std::mem::take(&mut buffer);
        match sql::split_script(&text) {
            Ok(statements) => {
                for statement in statements {
                    if !runtime.block_on(run_interruptible(client, &statement, mode, timing)) {
                        break;
                    }
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

enum Meta {
    Quit,
    Done,
    Run(String),
}

fn meta_command(line: &str, timing: &mut bool) -> Meta {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or("");
    let arg = words.next();
    match (command, arg) {
        ("\\q" | "\\quit" | ".quit" | ".exit", _) => Meta::Quit,
        ("\\timing" | ".timer", _) => {
            *timing = !*timing;
            println!("Timing is {}.", if *timing { "on" } else { "off" });
            Meta::Done
        }
        ("\\help" | "\\?" | ".help", _) => {
            println!("{HELP}");
            Meta::Done
        }
        ("\\dt" | ".tables", _) | ("\\d", None) => Meta::Run("SHOW TABLES".into()),
        ("\\d" | ".schema", Some(name)) => Meta::Run(format!(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND (name = '{}' COLLATE NOCASE OR (tbl_name = '{}' COLLATE NOCASE AND type = 'index')) ORDER BY type DESC",
            name.replace('\'', "''"),
            name.replace('\'', "''")
        )),
        _ => {
            eprintln!("unknown command {command}; \\help lists them");
            Meta::Done
        }
    }
}

/// Runs a statement; Ctrl-C cancels it. Returns false on error or cancel.
async fn run_interruptible(client: &mut Client, statement: &str, mode: Mode, timing: bool) -> bool {
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let ok = tokio::select! {
        r = run_statement(client, statement, mode, &mut out) => match r {
            Ok(()) => true,
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("cancelled");
            false
        }
    };
    if timing {
        println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3);
    }
    ok
}

/// Runs one statement and prints its result as it streams in.
async fn run_statement(client: &mut Client, statement: &str, mode: Mode, out: &mut impl Write) -> anyhow::Result<()> {
    let mut rows = client.query(statement, &[]).await?;
    if rows.columns().is_empty() {
        while rows.next().await?.is_some() {}
        if let Mode::Table = mode {
            let affected = rows.summary().map_or(0, |s| s.rows_affected);
            if affected > 0 {
                writeln!(out, "OK, {affected} row{} affected", plural(affected))?;
            } else {
                writeln!(out, "OK")?;
            }
        }
        return Ok(());
    }
    print_rows(&mut rows, mode, out).await
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

async fn print_rows(rows: &mut RowStream, mode: Mode, out: &mut impl Write) -> anyhow::Result<()> {
    let header: Vec<String> = rows.columns().iter().map(|c| c.name.clone()).collect();
    let mut total: u64 = 0;
    let mut first_block = true;
    loop {
        let mut block: Vec<Row> = Vec::new();
        while block.len() < BLOCK_ROWS {
            match rows.next().await? {
                Some(r) => block.push(r),
                None => break,
            }
        }
        let last = block.len() < BLOCK_ROWS;
        total += block.len() as u64;
        let cells: Vec<Vec<String>> = block.iter().map(|r| r.values().iter().map(cell).collect()).collect();
        match mode {
            Mode::List => {
                for r in &cells {
                    writeln!(out, "{}", r.join("|"))?;
                }
            }
            Mode::Table => {
                let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
                for r in &cells {
                    for (w, c) in widths.iter_mut().zip(r) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let line = |values: &[String]| -> String {
                    values.iter().zip(&widths).map(|(v, w)| format!(" {v:<w$} ")).collect::<Vec<_>>().join("|")
                };
                if first_block {
                    writeln!(out, "{}", line(&header).trim_end())?;
                    writeln!(out, "{}", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"))?;
                }
                for r in &cells {
                    writeln!(out, "{}", line(r).trim_end())?;
                }
            }
        }
        first_block = false;
        if last {
            break;
        }
    }
    if let Mode::Table = mode {
        writeln!(out, "({total} row{})", plural(total))?;
    }
    Ok(())
}
