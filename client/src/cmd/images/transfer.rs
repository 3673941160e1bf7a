//! `supctl images import` and `images export`: archives streamed to and from the daemon in
//! 1 MiB messages, with the file read or written while the network moves the previous chunk.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use futures::{Stream, StreamExt};
use serde_json::Value;
use sup_client::api::{
    import_request, import_response, ExportRequest, Image, ImportOptions, ImportProgress,
    ImportRequest, Platform,
};
use sup_client::Client;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::cmd::args::{label_map, parse_label, parse_platform};
use crate::cmd::output::{image_json, print_json, short_digest, Format, OutputArg, Table};
use crate::cmd::progress::Bar;
use crate::cmd::Context;

/// Size of the archive pieces sent to the daemon.
const CHUNK_SIZE: usize = 1 << 20;
/// Chunks read ahead of the network: enough to hide disk latency, little memory.
const CHUNKS_AHEAD: usize = 4;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Archive to import; `-` reads standard input
    file: String,
    /// Name to give the image instead of the name in the archive (archives of one image)
    #[arg(long, value_name = "REF")]
    name: Option<String>,
    /// Snapshotter to unpack into; the daemon's default when not given
    #[arg(long, value_name = "NAME")]
    snapshotter: Option<String>,
    /// Platform to unpack (OS/ARCH[/VARIANT]); the host's by default. All platforms' content
    /// is imported either way
    #[arg(long, value_parser = parse_platform)]
    platform: Option<Platform>,
    /// Import content and names without unpacking
    #[arg(long)]
    no_unpack: bool,
    /// Label every imported image (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Images to export, followed by the file to write when -o is not given
    #[arg(required = true, value_name = "REF")]
    args: Vec<String>,
    /// File to write the archive to; `-` writes to standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    file: Option<String>,
    /// Export only this platform (OS/ARCH[/VARIANT]); every platform held by default
    #[arg(long, value_parser = parse_platform)]
    platform: Option<Platform>,
}

/// What the reading thread hands to the request stream.
enum Piece {
    Data(Vec<u8>),
    /// Reading failed (the error went on the side channel): the stream must not end cleanly.
    Failed,
}

pub async fn import(ctx: &Context, args: ImportArgs) -> anyhow::Result<()> {
    let format = ctx.format(&args.out);
    let (reader, total) = open_archive(&args.file)?;
    let client = ctx.client().await?;
    let options = ImportOptions {
        name: args.name.unwrap_or_default(),
        snapshotter: args.snapshotter.unwrap_or_default(),
        platform: args.platform,
        no_unpack: args.no_unpack,
        labels: label_map(&args.labels),
    };

    let bar = Bar::bytes(ctx.show_progress(), total, "sending");
    let (requests, failed_rx) = import_requests(options, reader, &bar);
    let outcome = tokio::select! {
        outcome = send_import(client, requests, &bar) => outcome,
        Ok(err) = failed_rx => {
            Err(anyhow::Error::from(err).context(format!("reading {}", args.file)))
        }
    };
    bar.finish();
    let images = outcome?;
    match format {
        Format::Table => {
            let mut table = Table::new(&["NAME", "DIGEST"]);
            for image in &images {
                let digest = image.target.as_ref().map_or("-", |t| t.digest.as_str());
                table.row(vec![image.name.clone(), short_digest(digest)]);
            }
            table.print()
        }
        Format::Json => print_json(&Value::Array(images.iter().map(image_json).collect())),
    }
}

/// The Import request stream: the options, then the archive in chunks read on a blocking
/// thread a few chunks ahead of the network. A read error arrives on the returned channel.
fn import_requests(
    options: ImportOptions,
    reader: Box<dyn Read + Send>,
    bar: &Bar,
) -> (
    impl Stream<Item = ImportRequest> + Send + 'static,
    oneshot::Receiver<std::io::Error>,
) {
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    let (failed_tx, failed_rx) = oneshot::channel();
    tokio::task::spawn_blocking(move || read_chunks(reader, tx, failed_tx));

    let sent = bar.clone();
    let chunks = ReceiverStream::new(rx).then(move |piece| {
        let sent = sent.clone();
        async move {
            match piece {
                Piece::Data(bytes) => {
                    sent.inc(bytes.len() as u64);
                    ImportRequest {
                        payload: Some(import_request::Payload::Chunk(bytes)),
                    }
                }
                // A clean end of the stream would tell the daemon the archive is complete.
                // Stay open instead; the caller drops the call, which cancels it.
                Piece::Failed => std::future::pending().await,
            }
        }
    });
    let first = ImportRequest {
        payload: Some(import_request::Payload::Options(options)),
    };
    // Once the last chunk is handed over, the daemon is busy storing and verifying.
    let sent_all = bar.clone();
    let tail = futures::stream::once(async move { sent_all.wait("storing", String::new()) })
        .filter_map(|()| async { None::<ImportRequest> });
    let requests = futures::stream::once(async move { first })
        .chain(chunks)
        .chain(tail);
    (requests, failed_rx)
}

fn open_archive(path: &str) -> anyhow::Result<(Box<dyn Read + Send>, Option<u64>)> {
    if path == "-" {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            bail!("refusing to read an archive from a terminal: pipe one in or name a file");
        }
        return Ok((Box::new(stdin), None));
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let meta = file.metadata().with_context(|| format!("reading {path}"))?;
    if meta.is_dir() {
        bail!("{path} is a directory; import takes an archive (tar -C {path} -cf DIR.tar .)");
    }
    Ok((Box::new(file), meta.is_file().then_some(meta.len())))
}

/// Runs on a blocking thread: reads the archive in chunks until its end, an error, or the
/// call going away (the receiver dropped).
fn read_chunks(
    mut reader: Box<dyn Read + Send>,
    tx: mpsc::Sender<Piece>,
    failed: oneshot::Sender<std::io::Error>,
) {
    loop {
        let mut buf = vec![0u8; CHUNK_SIZE];
        match fill(&mut reader, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Piece::Data(buf)).is_err() {
                    return;
                }
            }
            Err(err) => {
                // The error first, so that the call is cancelled for it rather than left
                // waiting on a stream that will never move again.
                let _ = failed.send(err);
                let _ = tx.blocking_send(Piece::Failed);
                return;
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; a pipe gives short reads.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

async fn send_import(
    client: &Client,
    requests: impl Stream<Item = ImportRequest> + Send + 'static,
    bar: &Bar,
) -> anyhow::Result<Vec<Image>> {
    let mut responses = client.images().import(requests).await?.into_inner();
    let mut images = None;
    while let Some(response) = responses.message().await? {
        match response.payload {
            Some(import_response::Payload::Progress(progress)) => {
                show_import_progress(bar, &progress)
            }
            Some(import_response::Payload::Result(result)) => images = Some(result.images),
            None => {}
        }
    }
    images.ok_or_else(|| anyhow!("supd ended the import without reporting its result"))
}

fn show_import_progress(bar: &Bar, progress: &ImportProgress) {
    match progress.stage.as_str() {
        // The bar already counts the bytes as they are sent.
        "receiving" => {}
        "unpacking" => {
            let index = u64::try_from(progress.layer_index).unwrap_or(0);
            let count = u64::try_from(progress.layer_count).unwrap_or(0);
            bar.step(
                "unpacking",
                index,
                count,
                format!("layer {}", short_digest(&progress.layer)),
            );
        }
        "done" => bar.wait("finishing", String::new()),
        other => bar.wait(other, String::new()),
    }
}

pub async fn export(ctx: &Context, args: ExportArgs) -> anyhow::Result<()> {
    let (names, dest) = split_export_args(args.args, args.file)?;
    let client = ctx.client().await?;
    let request = ExportRequest {
        names,
        platform: args.platform,
    };
    let mut sink = Sink::open(&dest).await?;
    let bar = Bar::bytes(ctx.show_progress(), None, "receiving");
    let outcome = tokio::select! {
        outcome = receive_export(client, request, &mut sink, &bar) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    bar.finish();
    match outcome {
        Ok(()) => sink.commit().await,
        Err(err) => {
            sink.discard().await;
            Err(err)
        }
    }
}

/// The images and the destination, from `REF... -o FILE` or the positional `REF... FILE`.
fn split_export_args(
    mut args: Vec<String>,
    file: Option<String>,
) -> anyhow::Result<(Vec<String>, String)> {
    if let Some(file) = file {
        return Ok((args, file));
    }
    match args.pop() {
        Some(file) if !args.is_empty() => Ok((args, file)),
        _ => bail!(
            "export needs a destination: `supctl images export REF FILE`, or -o FILE \
             (`-` for standard output)"
        ),
    }
}

async fn receive_export(
    client: &Client,
    request: ExportRequest,
    sink: &mut Sink,
    bar: &Bar,
) -> anyhow::Result<()> {
    let mut stream = client.images().export(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        sink.write(&message.chunk).await?;
        bar.inc(message.chunk.len() as u64);
    }
    Ok(())
}

/// Where an export goes. A regular file is written beside its final name and renamed into
/// place once complete, so a failed export never leaves a truncated archive under that name.
enum Sink {
    Stdout(tokio::io::Stdout),
    File {
        file: tokio::fs::File,
        path: PathBuf,
        /// None when writing straight to a device or a pipe.
        tmp: Option<PathBuf>,
    },
}

impl Sink {
    async fn open(dest: &str) -> anyhow::Result<Sink> {
        if dest == "-" {
            if std::io::stdout().is_terminal() {
                bail!("refusing to write an archive to a terminal: redirect it or use -o FILE");
            }
            return Ok(Sink::Stdout(tokio::io::stdout()));
        }
        let path = PathBuf::from(dest);
        let special = match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_dir() => bail!("{dest} is a directory"),
            Ok(meta) => !meta.is_file(),
            Err(_) => false,
        };
        let (target, tmp) = if special {
            (path.clone(), None)
        } else {
            let tmp = PathBuf::from(format!("{dest}.tmp"));
            (tmp.clone(), Some(tmp))
        };
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(!special)
            .open(&target)
            .await
            .with_context(|| format!("creating {}", target.display()))?;
        Ok(Sink::File { file, path, tmp })
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(bytes).await.context("writing to stdout"),
            Sink::File { file, path, .. } => file
                .write_all(bytes)
                .await
                .with_context(|| format!("writing {}", path.display())),
        }
    }

    async fn commit(self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(mut out) => out.flush().await.context("writing to stdout"),
            Sink::File {
                mut file,
                path,
                tmp,
            } => {
                let done = async {
                    file.flush().await?;
                    if tmp.is_some() {
                        file.sync_all().await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                if let Err(err) = done.await {
                    drop(file);
                    if let Some(tmp) = &tmp {
                        let _ = tokio::fs::remove_file(tmp).await;
                    }
                    return Err(
                        anyhow::Error::from(err).context(format!("writing {}", path.display()))
                    );
                }
                drop(file);
                if let Some(tmp) = tmp {
                    if let Err(err) = tokio::fs::rename(&tmp, &path).await {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(anyhow::Error::from(err).context(format!(
                            "renaming {} to {}",
                            tmp.display(),
                            path.display()
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    async fn discard(self) {
        if let Sink::File {
            file,
            tmp: Some(tmp),
            ..
        } = self
        {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn export_destination_forms() {
        let (names, file) = split_export_args(strings(&["a", "out.tar"]), None).expect("ok");
        assert_eq!((names, file.as_str()), (strings(&["a"]), "out.tar"));
        let (names, file) =
            split_export_args(strings(&["a", "b"]), Some("x.tar".into())).expect("ok");
        assert_eq!((names, file.as_str()), (strings(&["a", "b"]), "x.tar"));
        let (names, file) = split_export_args(strings(&["a", "b", "-"]), None).expect("ok");
        assert_eq!((names, file.as_str()), (strings(&["a", "b"]), "-"));
        assert!(split_export_args(strings(&["a"]), None).is_err());
    }

    #[test]
    fn fill_reads_across_short_reads() {
        struct Trickle(Vec<u8>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0.remove(0);
                Ok(1)
            }
        }
        let mut reader = Trickle(vec![1, 2, 3, 4, 5]);
        let mut buf = [0u8; 3];
        assert_eq!(fill(&mut reader, &mut buf).expect("reads"), 3);
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(fill(&mut reader, &mut buf).expect("reads"), 2);
        assert_eq!(fill(&mut reader, &mut buf).expect("reads"), 0);
    }

    #[tokio::test]
    async fn read_failure_is_reported_before_the_stream_stops() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let (tx, mut rx) = mpsc::channel(1);
        let (failed_tx, failed_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || read_chunks(Box::new(Broken), tx, failed_tx));
        let err = failed_rx.await.expect("error reported");
        assert_eq!(err.to_string(), "disk on fire");
        assert!(matches!(rx.recv().await, Some(Piece::Failed)));
    }
}
