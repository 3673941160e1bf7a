//! Content store tests: writes, resumes, verification, references.

use super::*;

fn open() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("meta.db")).unwrap();
    let cs = ContentStore::new(dir.path(), store).unwrap();
    (dir, cs)
}

#[test]
fn write_commit_read() {
    let (_d, cs) = open();
    let data = b"hello world";
    let dg = digest::of_bytes(data);
    let mut w = cs.writer("default", "r1", data.len() as i64, &dg).unwrap();
    w.write_at(0, &data[..5]).unwrap();
    w.write_at(5, &data[5..]).unwrap();
    assert_eq!(w.commit(0, "", &Labels::new()).unwrap(), dg);
    let mut s = String::new();
    cs.open("default", &dg)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello world");
    assert_eq!(cs.info("default", &dg).unwrap().size, 11);
    assert!(cs.info("other", &dg).unwrap_err().is_not_found());
    assert!(cs.status("default", "r1").unwrap_err().is_not_found());
}

#[test]
fn resume_continues_at_offset() {
    let (_d, cs) = open();
    let data = b"0123456789";
    let dg = digest::of_bytes(data);
    {
        let mut w = cs.writer("default", "r", 10, &dg).unwrap();
        w.write_at(0, &data[..4]).unwrap();
    }
    assert_eq!(cs.status("default", "r").unwrap().offset, 4);
    let mut w = cs.writer("default", "r", 10, "").unwrap();
    assert!(w.write_at(0, b"x").is_err());
    w.write_at(4, &data[4..]).unwrap();
    assert_eq!(w.commit(10, &dg, &Labels::new()).unwrap(), dg);
}

#[test]
fn wrong_digest_or_size_is_refused_and_leaves_nothing() {
    let (_d, cs) = open();
    let dg = digest::of_bytes(b"other");
    let mut w = cs.writer("default", "r", 0, "").unwrap();
    w.write_at(0, b"data").unwrap();
    assert!(matches!(
        w.commit(0, &dg, &Labels::new()),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(!cs.blob_exists(&dg).unwrap());
    assert!(!cs.blob_exists(&digest::of_bytes(b"data")).unwrap());
    assert!(cs.list("default").unwrap().is_empty());
    cs.abort("default", "r").unwrap();
    assert!(cs.list_statuses("default").unwrap().is_empty());
}

#[test]
fn one_writer_per_ref() {
    let (_d, cs) = open();
    let _w = cs.writer("default", "r", 0, "").unwrap();
    assert!(matches!(
        cs.writer("default", "r", 0, ""),
        Err(Error::Unavailable(_))
    ));
    assert!(cs.writer("other", "r", 0, "").is_ok());
}

#[test]
fn blob_removed_when_last_namespace_lets_go() {
    let (_d, cs) = open();
    let data = b"shared";
    let (dg, _, created, hold) = cs.write_blob(&mut &data[..], None, Some(6)).unwrap();
    assert!(created);
    cs.record("a", &dg, &Labels::new()).unwrap();
    cs.record("b", &dg, &Labels::new()).unwrap();
    drop(hold);
    cs.delete("a", &dg).unwrap();
    assert!(cs.blob_exists(&dg).unwrap());
    cs.delete("b", &dg).unwrap();
    assert!(!cs.blob_exists(&dg).unwrap());
}

#[test]
fn held_blob_survives_cleanup() {
    let (_d, cs) = open();
    let (dg, _, _, hold) = cs.write_blob(&mut &b"x"[..], None, None).unwrap();
    cs.remove_if_unreferenced(&dg).unwrap();
    assert!(cs.blob_exists(&dg).unwrap());
    drop(hold);
    cs.remove_if_unreferenced(&dg).unwrap();
    assert!(!cs.blob_exists(&dg).unwrap());
}

#[test]
fn write_blob_checks_expectations() {
    let (_d, cs) = open();
    let lie = digest::of_bytes(b"not this");
    assert!(matches!(
        cs.write_blob(&mut &b"this"[..], Some(&lie), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(!cs.blob_exists(&digest::of_bytes(b"this")).unwrap());
}
