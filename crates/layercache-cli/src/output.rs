//! What the tool prints (text for a person, or one JSON object), its failures and their exit
//! codes.

use std::{io::Write as _, process::ExitCode};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use layercache::BusStatus;
use serde_json::{json, Value};

/// Why a command failed; each has its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Redis unreachable, refused (a password, an ACL) or failing: 1.
    Redis(String),
    /// Bad usage: 2 (as clap's own usage errors).
    Usage(String),
    /// No such key or region: 3.
    NotFound(String),
    /// The key holds something that is not a sound layercache entry: 4.
    NotOurs(String),
}

impl Failure {
    /// A cache error, with the URL redacted.
    pub(crate) fn from_cache(url: &str, e: &layercache::Error) -> Self {
        let message = format!("{} (Redis at {})", e, redact(url));
        if e.kind() == layercache::ErrorKind::Config {
            Self::Usage(message)
        } else {
            Self::Redis(message)
        }
    }

    fn code(&self) -> u8 {
        match self {
            Self::Redis(_) => 1,
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::NotOurs(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Redis(m) | Self::Usage(m) | Self::NotFound(m) | Self::NotOurs(m) => m,
        }
    }
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{shown}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// A note for the person at the terminal (stderr: it never mixes with the output).
pub(crate) fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// A JSON value as a table cell: `-` for null, strings without quotes.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How often plain progress lines are printed.
const LINE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// When to show progress on long walks (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ShowProgress {
    /// A progress bar when stderr is a terminal, nothing otherwise.
    Auto,
    /// Always: a bar on a terminal, plain lines otherwise (for logs and scripts).
    Always,
    /// Never.
    Never,
}

/// Progress of one long walk, on stderr.
#[derive(Debug)]
pub(crate) enum Progress {
    Bar(ProgressBar),
    Lines {
        what: String,
        last: std::time::Instant,
        at: u64,
    },
    Hidden,
}

impl Progress {
    /// `n` done so far.
    pub(crate) fn set(&mut self, n: u64) {
        match self {
            Self::Bar(bar) => bar.set_position(n),
            Self::Lines { what, last, at } => {
                *at = n;
                if last.elapsed() >= LINE_EVERY {
                    *last = std::time::Instant::now();
                    note(&format!("{what}: {n}"));
                }
            }
            Self::Hidden => {}
        }
    }

    /// The walk ended.
    pub(crate) fn finish(self) {
        match self {
            Self::Bar(bar) => bar.finish_and_clear(),
            Self::Lines { what, at, .. } => note(&format!("{what}: {at}, done")),
            Self::Hidden => {}
        }
    }
}

/// The printer: text or JSON on stdout, errors and progress on stderr.
#[derive(Debug)]
pub(crate) struct Out {
    json: bool,
    progress: ShowProgress,
}

impl Out {
    pub(crate) fn new(json: bool, progress: ShowProgress) -> Self {
        Self { json, progress }
    }

    fn print(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
    }

    fn print_json(&self, value: &Value) {
        self.print(&value.to_string());
    }

    /// Progress on stderr for a long walk (`what`: "counting keys of users"): a bar on a
    /// terminal; plain lines elsewhere with `--progress always`; nothing with `never`.
    pub(crate) fn progress(&self, what: &str) -> Progress {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        match (self.progress, terminal) {
            (ShowProgress::Never, _) | (ShowProgress::Auto, false) => Progress::Hidden,
            (ShowProgress::Auto | ShowProgress::Always, true) => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                if let Ok(style) =
                    ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec})")
                {
                    bar.set_style(style);
                }
                bar.set_message(what.to_owned());
                Progress::Bar(bar)
            }
            (ShowProgress::Always, false) => Progress::Lines {
                what: what.to_owned(),
                // The first update prints at once; the next ones every 200 ms.
                last: std::time::Instant::now()
                    .checked_sub(LINE_EVERY)
                    .unwrap_or_else(std::time::Instant::now),
                at: 0,
            },
        }
    }

    pub(crate) fn regions(&self, cache: &str, rows: Vec<Value>) {
        if self.json {
            self.print_json(&json!({ "cache": cache, "regions": rows }));
            return;
        }
        if rows.is_empty() {
            self.print(&format!("cache {cache:?} has no region in Redis"));
            return;
        }
        self.print(&format!(
            "{:<24} {:>7} {:>16} {:>10}",
            "region", "schema", "generation", "keys"
        ));
        for r in rows {
            self.print(&format!(
                "{:<24} {:>7} {:>16} {:>10}",
                cell(&r["region"]),
                cell(&r["schema"]),
                cell(&r["generation"]),
                cell(&r["keys"])
            ));
        }
    }

    pub(crate) fn invalidated(&self, what: &str, status: Option<&BusStatus>) {
        let instance = status.map(|s| s.instance_id.to_string());
        let seq = status.map(|s| s.published_seq);
        if self.json {
            self.print_json(&json!({
                "invalidated": what,
                "instance": instance,
                "published_seq": seq,
            }));
        } else if let (Some(instance), Some(seq)) = (instance, seq) {
            self.print(&format!(
                "invalidated {what}; announced on the bus by instance {instance} (message {seq})"
            ));
        } else {
            self.print(&format!(
                "invalidated {what} (in Redis: no instance holds it in L1)"
            ));
        }
    }

    /// One line of a stream (`watch`): a JSON object per line with `--json`.
    pub(crate) fn line(&self, value: &Value, text: &str) {
        if self.json {
            self.print_json(value);
        } else {
            self.print(text);
        }
    }

    pub(crate) fn instances(&self, cache: &str, seconds: f64, rows: Vec<Value>, dropped: u64) {
        if self.json {
            self.print_json(&json!({
                "cache": cache,
                "listened_s": seconds,
                "instances": rows,
                "dropped": dropped,
            }));
            return;
        }
        self.print(&format!(
            "{} instance(s) of {cache:?}: presence records in Redis, and the bus heard for {seconds} s{}",
            rows.len(),
            if dropped > 0 {
                format!(" ({dropped} undecodable message(s) dropped)")
            } else {
                String::new()
            }
        ));
        if rows.is_empty() {
            return;
        }
        self.print(&format!(
            "{:<32} {:>8} {:>8} {:>5} {:>10} {:>6} {:<24}",
            "instance", "version", "up (s)", "heard", "l1 entries", "lost", "last flush"
        ));
        for r in rows {
            let flush = match (&r["last_flush"], &r["last_flush_s_ago"]) {
                (Value::String(reason), ago) => format!("{reason}, {} s ago", cell(ago)),
                _ => "-".to_owned(),
            };
            self.print(&format!(
                "{:<32} {:>8} {:>8} {:>5} {:>10} {:>6} {:<24}",
                cell(&r["instance"]),
                cell(&r["version"]),
                cell(&r["up_s"]),
                if r["heard"] == Value::Bool(true) {
                    "yes"
                } else {
                    "no"
                },
                cell(&r["l1_entries"]),
                cell(&r["lost"]),
                flush
            ));
        }
    }

    pub(crate) fn inspected(&self, value: &Value, text: &str) {
        if self.json {
            self.print_json(value);
        } else {
            self.print(text);
        }
    }

    /// Reports a failure (stderr; also a JSON object on stdout with `--json`) and gives its
    /// exit code.
    pub(crate) fn fail(&self, failure: &Failure) -> ExitCode {
        let _ = writeln!(std::io::stderr().lock(), "error: {}", failure.message());
        if self.json {
            self.print_json(&json!({ "error": failure.message(), "exit": failure.code() }));
        }
        ExitCode::from(failure.code())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://secret@host"), "redis://***@host");
        assert_eq!(redact("redis://:pw@h?node=a:1"), "redis://:***@h?node=a:1");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact("not a url"), "not a url");
    }
}
