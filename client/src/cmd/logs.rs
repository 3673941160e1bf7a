//! `supctl logs`: a process's logged output, stdout to our stdout and stderr to our stderr,
//! byte for byte, optionally following it until the process exits.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sup_client::api::{LogsRequest, StdStream};
use tokio::io::AsyncWriteExt;

use super::args::parse_since;
use super::Context;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new output until the process exits
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines ("all" for every line)
    #[arg(long, value_name = "N", value_parser = parse_tail)]
    tail: Option<Tail>,
    /// Only output logged since this time: RFC 3339, or a duration ago (10m, 1h30m)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<DateTime<Utc>>,
    /// An exec'd process's output instead of the container's
    #[arg(long, value_name = "ID")]
    exec_id: Option<String>,
    /// Container whose output to show
    id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    All,
    Last(i64),
}

fn parse_tail(text: &str) -> Result<Tail, String> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(Tail::All);
    }
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Tail::Last(n)),
        _ => Err(format!(
            "tail {text:?}: expected a number of lines or \"all\""
        )),
    }
}

/// The API's `tail` and `since` for the flags. The API reads a tail of 0 as "all", so
/// `--tail 0` (no old lines: with -f, only what comes next) is asked as "since now".
fn window(
    tail: Option<Tail>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (i64, Option<DateTime<Utc>>) {
    match tail {
        None | Some(Tail::All) => (0, since),
        Some(Tail::Last(0)) => (0, Some(since.map_or(now, |since| since.max(now)))),
        Some(Tail::Last(n)) => (n, since),
    }
}

pub async fn run(ctx: &Context, args: LogsArgs) -> anyhow::Result<()> {
    let (tail, since) = window(args.tail, args.since, Utc::now());
    let request = LogsRequest {
        container_id: args.id,
        exec_id: args.exec_id.unwrap_or_default(),
        follow: args.follow,
        tail,
        since: since.map(|time| prost_types::Timestamp {
            seconds: time.timestamp(),
            nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
        }),
    };
    let mut stream = ctx
        .client()
        .await?
        .tasks()
        .logs(request)
        .await?
        .into_inner();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(entry) = stream.message().await? {
        if entry.data.is_empty() {
            continue;
        }
        // Flushed entry by entry: a follower sees output as it is logged.
        if entry.stream == StdStream::Stderr as i32 {
            stderr
                .write_all(&entry.data)
                .await
                .context("writing to stderr")?;
            stderr.flush().await.context("writing to stderr")?;
        } else {
            stdout
                .write_all(&entry.data)
                .await
                .context("writing to stdout")?;
            stdout.flush().await.context("writing to stdout")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(parse_tail("10"), Ok(Tail::Last(10)));
        assert_eq!(parse_tail("0"), Ok(Tail::Last(0)));
        assert_eq!(parse_tail("ALL"), Ok(Tail::All));
        assert!(parse_tail("-1").is_err());
        assert!(parse_tail("ten").is_err());
    }

    #[test]
    fn windows() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        let before = DateTime::from_timestamp(1_600_000_000, 0).expect("valid");
        assert_eq!(window(None, None, now), (0, None));
        assert_eq!(
            window(Some(Tail::All), Some(before), now),
            (0, Some(before))
        );
        assert_eq!(window(Some(Tail::Last(5)), None, now), (5, None));
        assert_eq!(window(Some(Tail::Last(0)), None, now), (0, Some(now)));
        assert_eq!(
            window(Some(Tail::Last(0)), Some(before), now),
            (0, Some(now))
        );
    }
}
