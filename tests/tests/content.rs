//! The content store through its API: write, read, info, status, abort, resumed writes, and
//! commits that must be refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sup_client::{api, Client};
use sup_tests::digest::sha256;
use sup_tests::rpc::{self, eventually, expect_code};
use sup_tests::Daemon;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_req(
    action: api::WriteAction,
    r: &str,
    offset: usize,
    data: &[u8],
) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: action as i32,
        r#ref: r.to_string(),
        offset: offset as i64,
        data: data.to_vec(),
        ..Default::default()
    }
}

/// Sends `reqs` as one Write stream; returns every answer, or the first error.
async fn write(
    client: &Client,
    reqs: Vec<api::WriteContentRequest>,
) -> Result<Vec<api::WriteContentResponse>, Status> {
    let mut stream = client
        .content()
        .write(tokio_stream::iter(reqs))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.push(msg);
    }
    Ok(out)
}

async fn read(client: &Client, digest: &str, offset: i64, size: i64) -> Result<Vec<u8>, Status> {
    let mut stream = client
        .content()
        .read(api::ReadContentRequest {
            digest: digest.to_string(),
            offset,
            size,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        assert_eq!(
            msg.offset,
            offset + out.len() as i64,
            "chunks arrive in order"
        );
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

async fn info(client: &Client, digest: &str) -> Result<api::ContentInfo, Status> {
    Ok(client
        .content()
        .info(api::ContentInfoRequest {
            digest: digest.to_string(),
        })
        .await?
        .into_inner()
        .info
        .unwrap())
}

async fn status(client: &Client, r: &str) -> Result<api::ContentStatus, Status> {
    Ok(client
        .content()
        .status(api::ContentStatusRequest {
            r#ref: r.to_string(),
        })
        .await?
        .into_inner()
        .status
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_info_round_trip() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let data = blob(3 * 1024 * 1024 + 17);
    let digest = sha256(&data);
    let third = data.len() / 3;
    let mut first = write_req(api::WriteAction::Write, "round-trip", 0, &data[..third]);
    first.total = data.len() as i64;
    first.expected = digest.clone();
    let second = write_req(api::WriteAction::Write, "", third, &data[third..2 * third]);
    let mut last = write_req(api::WriteAction::Commit, "", 2 * third, &data[2 * third..]);
    last.labels = [("purpose".to_string(), "test".to_string())].into();
    let answers = write(&client, vec![first, second, last]).await.unwrap();
    let offsets: Vec<i64> = answers.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, [third as i64, 2 * third as i64, data.len() as i64]);
    assert_eq!(answers.last().unwrap().digest, digest);

    let got = info(&client, &digest).await.unwrap();
    assert_eq!(got.size, data.len() as i64);
    assert_eq!(got.labels["purpose"], "test");
    assert_eq!(read(&client, &digest, 0, 0).await.unwrap(), data);
    assert_eq!(
        read(&client, &digest, 1000, 5000).await.unwrap(),
        &data[1000..6000]
    );
    assert_eq!(
        read(&client, &digest, data.len() as i64 - 3, 0)
            .await
            .unwrap(),
        &data[data.len() - 3..]
    );
    expect_code(
        status(&client, "round-trip").await,
        Code::NotFound,
        "status of a committed ref",
    );
    assert!(rpc::list_ingests(&client).await.is_empty());
    let listed: Vec<String> = rpc::list_content(&client)
        .await
        .into_iter()
        .map(|c| c.digest)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&digest));

    // Writing the same blob again either succeeds as a no-op or says it exists; either way
    // one blob, same bytes, no ingest left.
    let mut again = write_req(api::WriteAction::Commit, "again", 0, &data);
    again.expected = digest.clone();
    match write(&client, vec![again]).await {
        Ok(answers) => assert_eq!(answers.last().unwrap().digest, digest),
        Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message()),
    }
    assert_eq!(rpc::list_content(&client).await.len(), 1);
    assert!(rpc::list_ingests(&client).await.is_empty());
    assert_eq!(read(&client, &digest, 0, 0).await.unwrap(), data);

    client
        .content()
        .delete(api::DeleteContentRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap();
    expect_code(
        info(&client, &digest).await,
        Code::NotFound,
        "info after delete",
    );
    expect_code(
        read(&client, &digest, 0, 0).await,
        Code::NotFound,
        "read after delete",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_write_resumes_from_its_offset() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let data = blob(2 * 1024 * 1024);
    let digest = sha256(&data);
    let half = data.len() / 2;

    // First connection: write half, then go away without committing.
    {
        let (tx, rx) = mpsc::channel(4);
        let mut first = write_req(api::WriteAction::Write, "resume-me", 0, &data[..half]);
        first.total = data.len() as i64;
        first.expected = digest.clone();
        tx.send(first).await.unwrap();
        let mut stream = client
            .content()
            .write(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().unwrap();
        assert_eq!(answer.offset, half as i64);
        drop(stream);
        drop(tx);
    }
    let st = eventually(Duration::from_secs(5), || async {
        match status(&client, "resume-me").await {
            Ok(s) if s.offset == half as i64 => Ok(s),
            other => Err(other),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("status of the interrupted ingest: {last:?}"));
    assert_eq!(st.total, data.len() as i64);
    assert_eq!(st.expected, digest);
    let statuses = rpc::list_ingests(&client).await;
    assert_eq!(
        statuses
            .iter()
            .map(|s| s.r#ref.as_str())
            .collect::<Vec<_>>(),
        ["resume-me"]
    );
    expect_code(
        info(&client, &digest).await,
        Code::NotFound,
        "half a blob is not visible",
    );

    // Second connection: ask where it stands, continue from there, commit.
    let stat = write_req(api::WriteAction::Stat, "resume-me", 0, &[]);
    let answers = write(&client, vec![stat]).await.unwrap();
    assert_eq!(answers[0].offset, half as i64);
    let mut rest = write_req(api::WriteAction::Commit, "resume-me", half, &data[half..]);
    rest.expected = digest.clone();
    let answers = write(&client, vec![rest]).await.unwrap();
    assert_eq!(answers.last().unwrap().digest, digest);
    assert_eq!(read(&client, &digest, 0, 0).await.unwrap(), data);
    assert!(rpc::list_ingests(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_at_the_wrong_offset_is_refused() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let data = blob(1000);
    let first = write_req(api::WriteAction::Write, "gap", 0, &data[..500]);
    write(&client, vec![first]).await.unwrap();
    let gap = write_req(api::WriteAction::Write, "gap", 600, &data[600..]);
    let err = write(&client, vec![gap]).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange
        ),
        "writing at 600 when the ingest is at 500: {:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(status(&client, "gap").await.unwrap().offset, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_with_a_wrong_digest_or_size_is_refused_and_leaves_nothing() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let data = blob(100_000);
    let real = sha256(&data);
    let claimed = sha256(b"something else");

    let mut lie = write_req(api::WriteAction::Commit, "liar", 0, &data);
    lie.expected = claimed.clone();
    let err = write(&client, vec![lie]).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::FailedPrecondition | Code::InvalidArgument),
        "commit with a wrong digest: {:?}: {}",
        err.code(),
        err.message()
    );
    expect_code(
        info(&client, &claimed).await,
        Code::NotFound,
        "the claimed digest",
    );
    expect_code(
        info(&client, &real).await,
        Code::NotFound,
        "the real digest",
    );
    assert!(rpc::list_content(&client).await.is_empty());

    let mut short = write_req(api::WriteAction::Commit, "short", 0, &data);
    short.expected = real.clone();
    short.total = data.len() as i64 + 1;
    let err = write(&client, vec![short]).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::FailedPrecondition | Code::InvalidArgument),
        "commit with a wrong total: {:?}: {}",
        err.code(),
        err.message()
    );
    expect_code(
        info(&client, &real).await,
        Code::NotFound,
        "blob of a refused commit",
    );

    let mut malformed = write_req(api::WriteAction::Commit, "malformed", 0, &data);
    malformed.expected = "sha256:xyz".into();
    expect_code(
        write(&client, vec![malformed]).await,
        Code::InvalidArgument,
        "malformed digest",
    );
    assert!(rpc::list_content(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_an_ingest() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let data = blob(10_000);
    write(
        &client,
        vec![write_req(api::WriteAction::Write, "doomed", 0, &data)],
    )
    .await
    .unwrap();
    assert_eq!(
        status(&client, "doomed").await.unwrap().offset,
        data.len() as i64
    );
    client
        .content()
        .abort(api::AbortContentRequest {
            r#ref: "doomed".into(),
        })
        .await
        .unwrap();
    expect_code(
        status(&client, "doomed").await,
        Code::NotFound,
        "status after abort",
    );
    assert!(rpc::list_ingests(&client).await.is_empty());
    expect_code(
        client
            .content()
            .abort(api::AbortContentRequest {
                r#ref: "doomed".into(),
            })
            .await,
        Code::NotFound,
        "second abort",
    );
    // The ref starts afresh.
    let answers = write(
        &client,
        vec![write_req(api::WriteAction::Stat, "doomed", 0, &[])],
    )
    .await
    .unwrap();
    assert_eq!(answers[0].offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_an_image_uses_cannot_be_deleted() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = sup_tests::busybox::busybox_image();
    let archive = sup_tests::OciArchive::new()
        .image(
            &image,
            sup_tests::image::name_annotations("example.com/held:1"),
        )
        .build();
    rpc::import_ok(&client, rpc::options(""), &archive).await;
    for digest in [
        &image.manifest_digest,
        &image.config_digest,
        &image.layers[0].digest,
    ] {
        expect_code(
            client
                .content()
                .delete(api::DeleteContentRequest {
                    digest: digest.clone(),
                })
                .await,
            Code::FailedPrecondition,
            &format!("deleting {digest}, which the image uses"),
        );
        info(&client, digest).await.unwrap();
    }
}
