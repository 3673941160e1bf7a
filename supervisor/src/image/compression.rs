//! Layer compression: gzip, zstd or none, told by media type or by the stream's first bytes.
