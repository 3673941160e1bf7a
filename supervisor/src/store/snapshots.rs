//! Snapshot records in the `snapshots` tree (see the schema in `store`).
